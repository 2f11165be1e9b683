"""`tuneserve adapters alias set|delete|list|history`, `adapters promote`, `adapters rollback`
and `train --promotion ... --init-from ...` (cli.py wires them in)."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from tuneserve_client.aliases import POLICIES, AliasMove
from tuneserve_client.client import Client


def add_train_arguments(train: argparse.ArgumentParser) -> None:
    group = train.add_argument_group("release (unset: promotion always, trained from scratch)")
    group.add_argument(
        "--promotion",
        choices=POLICIES,
        help="always: `default` moves to the new version; manual: only `adapters promote` moves it; "
        "if_better: evaluated against `default` first",
    )
    group.add_argument(
        "--promotion-metric", metavar="NAME", help="if_better: accuracy | macro_f1 | eval_loss"
    )
    group.add_argument(
        "--promotion-tolerance", type=float, metavar="X", help="if_better: largest regression promoted"
    )
    group.add_argument(
        "--promotion-eval-dataset", metavar="ID", help="if_better: the dataset both are evaluated on"
    )
    group.add_argument(
        "--init-from", metavar="NAME@VERSION", help="continue training from a version (or NAME@ALIAS)"
    )


def train_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "promotion": args.promotion,
        "promotion_metric": args.promotion_metric,
        "promotion_tolerance": args.promotion_tolerance,
        "promotion_eval_dataset": args.promotion_eval_dataset,
        "init_from": args.init_from,
    }


def add_commands(adapter_cmds: Any, emit: Any, table: Any, time: Any) -> None:
    """Register the alias commands under `tuneserve adapters`."""

    def moved(out: TextIO, args: argparse.Namespace, name: str, move: AliasMove) -> None:
        if not move.sequence:
            text = f"{name}@{move.alias} already points at version {move.to_version}"
        elif not move.to_version:
            text = f"{name}@{move.alias} removed (was version {move.from_version})"
        else:
            was = f"version {move.from_version}" if move.from_version else "new"
            text = f"{name}@{move.alias} -> version {move.to_version} (was {was})"
        emit(out, args, move, text)

    def cmd_set(client: Client, args: argparse.Namespace, out: TextIO) -> int:
        move, _ = client.set_alias(args.adapter, args.alias, reason=args.reason)
        moved(out, args, args.adapter.partition("@")[0], move)
        return 0

    def cmd_delete(client: Client, args: argparse.Namespace, out: TextIO) -> int:
        move, _ = client.delete_alias(args.name, args.alias, reason=args.reason)
        moved(out, args, args.name, move)
        return 0

    def cmd_list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
        adapter = client.get_adapter(args.name)
        rows = [[alias, str(version)] for alias, version in sorted(adapter.aliases.items())]
        rows.append(["latest", f"{adapter.latest_version} (reserved: the newest version)"])
        emit(
            out,
            args,
            {"aliases": adapter.aliases, "latest": adapter.latest_version},
            table(["ALIAS", "VERSION"], rows),
        )
        return 0

    def cmd_history(client: Client, args: argparse.Namespace, out: TextIO) -> int:
        moves = list(client.alias_history(args.name, alias=args.alias or ""))
        rows = [
            [time(m.time), m.alias, str(m.from_version or "-"), str(m.to_version or "-"), m.actor, m.reason]
            for m in moves
        ]
        emit(out, args, moves, table(["TIME", "ALIAS", "FROM", "TO", "BY", "REASON"], rows))
        return 0

    def cmd_promote(client: Client, args: argparse.Namespace, out: TextIO) -> int:
        move, _ = client.promote_version(args.adapter, reason=args.reason)
        moved(out, args, args.adapter.partition("@")[0], move)
        return 0

    def cmd_rollback(client: Client, args: argparse.Namespace, out: TextIO) -> int:
        move, _ = client.rollback(args.name, alias=args.alias or "", reason=args.reason)
        moved(out, args, args.name, move)
        return 0

    alias = adapter_cmds.add_parser(
        "alias", help="set, delete, list aliases of an adapter, or show their history"
    )
    alias_cmds = alias.add_subparsers(dest="alias_command", required=True, metavar="ACTION")
    s = alias_cmds.add_parser("set", help="point ALIAS at NAME@VERSION (or NAME@OTHER-ALIAS)")
    s.add_argument("adapter", metavar="NAME@VERSION")
    s.add_argument("alias", metavar="ALIAS")
    s.add_argument("--reason", default="", help="why (kept in the history)")
    s.set_defaults(handler=cmd_set)
    d = alias_cmds.add_parser("delete", help="remove an alias (not default)")
    d.add_argument("name", metavar="NAME")
    d.add_argument("alias", metavar="ALIAS")
    d.add_argument("--reason", default="")
    d.set_defaults(handler=cmd_delete)
    ls = alias_cmds.add_parser("list", help="an adapter's aliases and the versions they point at")
    ls.add_argument("name", metavar="NAME")
    ls.set_defaults(handler=cmd_list)
    h = alias_cmds.add_parser("history", help="an adapter's alias moves, newest first")
    h.add_argument("name", metavar="NAME")
    h.add_argument("--alias", help="only this alias")
    h.set_defaults(handler=cmd_history)
    p = adapter_cmds.add_parser("promote", help="move `default` (what NAME serves) to NAME@VERSION")
    p.add_argument("adapter", metavar="NAME@VERSION")
    p.add_argument("--reason", default="")
    p.set_defaults(handler=cmd_promote)
    r = adapter_cmds.add_parser("rollback", help="move `default` back to the version it pointed at before")
    r.add_argument("name", metavar="NAME")
    r.add_argument("--alias", help="roll this alias back instead of default")
    r.add_argument("--reason", default="")
    r.set_defaults(handler=cmd_rollback)
