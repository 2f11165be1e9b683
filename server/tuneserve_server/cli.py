"""Server-side commands of the `tuneserve` console script: serve, api, worker, config show,
and `keys create / list / revoke` (API keys, written to the job store the settings name).

Every setting is a flag (`--max-batch-rows 32`) and a TUNESERVE_* variable; flags win."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from dataclasses import MISSING, fields

from tuneserve_server.config import ConfigError, Settings, load_settings
from tuneserve_server.domain.tenancy import Role

SERVER_COMMANDS = ("serve", "api", "worker", "config", "keys")


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="TOML file of settings (also $TUNESERVE_CONFIG); env and flags override it",
    )
    group = parser.add_argument_group("settings (also TUNESERVE_<NAME> variables)")
    for f in fields(Settings):
        default = f.default if f.default is not MISSING else None
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f"{f.metadata.get('help', '')} (default: {default})",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneserve", description="tuneserve server roles")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "all-in-one: the gRPC API plus one supervised trainer worker process"),
        ("api", "the gRPC API only (scale these out; run workers separately)"),
        ("worker", "a trainer worker only: claims queued jobs and trains them"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        _add_setting_flags(p)
        if name == "worker":
            p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    config = sub.add_parser("config", help="inspect the effective configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the effective settings")
    _add_setting_flags(show)
    _add_keys_parser(sub)
    return parser


def _add_keys_parser(sub: argparse._SubParsersAction) -> None:
    text = "API keys in the job store the settings name (--data-dir, --database-url, --config)"
    keys = sub.add_parser("keys", help="create, list and revoke API keys", description=text)
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser(
        "create", help="make a key; prints its token once (only a salted hash is stored)"
    )
    create.add_argument("--tenant", required=True, help="the tenant (namespace) the key acts in")
    create.add_argument(
        "--role",
        action="append",
        required=True,
        choices=[r.value for r in Role],
        help="a role of the key (repeat for several): predict, train (includes predict), admin",
    )
    create.add_argument("--description", default="", help="what the key is for (shown by list)")
    _add_setting_flags(create)
    listing = keys_sub.add_parser("list", help="the keys (never their secrets)")
    listing.add_argument("--tenant", default=None, help="only this tenant's keys")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    _add_setting_flags(listing)
    revoke = keys_sub.add_parser(
        "revoke", help="revoke a key: every replica refuses it within auth_cache_s seconds"
    )
    revoke.add_argument("key_id", help="the key id (the part after tsk_ in the token)")
    _add_setting_flags(revoke)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {f.name: getattr(args, f.name) for f in fields(Settings)}
    return load_settings(overrides, config_file=args.config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"tuneserve: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if settings.base_model == "minilm":  # packaged weights: never ask a hub for anything
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from tuneserve_server.observability.logging import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    if args.command == "config":
        for name, value in settings.redacted().items():
            print(f"{name} = {value}")
        return 0
    if args.command == "worker":
        return _run_worker(settings, args.parent_pid)
    if args.command == "keys":
        return _run_keys(settings, args)
    from tuneserve_server.app import run_api

    try:
        asyncio.run(run_api(settings, with_worker=args.command == "serve" and settings.spawn_worker))
    except ConfigError as exc:
        print(f"tuneserve: invalid configuration: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_keys(settings: Settings, args: argparse.Namespace) -> int:
    import json

    from tuneserve_server.domain.errors import TuneserveError
    from tuneserve_server.services.keys import KeyService
    from tuneserve_server.storage.factory import build_job_store

    store = build_job_store(settings)
    try:
        keys = KeyService(store)
        if args.keys_command == "create":
            record, token = keys.create(args.tenant, args.role, args.description)
            roles = "+".join(sorted(r.value for r in record.roles))
            print(f"created key {record.key_id} for tenant {record.tenant} ({roles})", file=sys.stderr)
            print("the token is shown only now; keep it secret:", file=sys.stderr)
            print(token)
        elif args.keys_command == "list":
            for r in keys.list(args.tenant):
                row = {
                    "key_id": r.key_id,
                    "tenant": r.tenant,
                    "roles": sorted(x.value for x in r.roles),
                    "description": r.description,
                    "created_at": r.created_at.isoformat() if r.created_at else "",
                    "revoked_at": r.revoked_at.isoformat() if r.revoked_at else "",
                }
                if args.json:
                    print(json.dumps(row))
                else:
                    state = f"revoked {row['revoked_at']}" if r.revoked_at else "active"
                    print(
                        f"{r.key_id}  {r.tenant}  {'+'.join(row['roles'])}  {state}  "
                        f"created {row['created_at']}  {r.description}"
                    )
        else:
            record = keys.revoke(args.key_id)
            print(f"revoked key {record.key_id} of tenant {record.tenant}", file=sys.stderr)
    except TuneserveError as exc:
        print(f"tuneserve keys: {exc.message}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _run_worker(settings: Settings, parent_pid: int | None) -> int:
    import structlog

    from tuneserve_server.observability.metrics import serve_metrics
    from tuneserve_server.storage.factory import build_stores
    from tuneserve_server.training.worker import TrainerWorker, wait_for_parent_exit

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    store, adapters = build_stores(settings)
    worker = TrainerWorker(settings, store, adapters)
    signal.signal(signal.SIGTERM, lambda *_: worker.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: worker.stopping.set())
    if parent_pid:
        wait_for_parent_exit(worker, parent_pid)
    log = structlog.get_logger("tuneserve.worker")
    try:
        port = serve_metrics(settings.worker_metrics_port, settings.metrics_host)
    except OSError as exc:  # e.g. a draining predecessor still holds it: train on, unobserved
        log.warning("metrics endpoint not started", port=settings.worker_metrics_port, error=str(exc))
    else:
        if port:
            log.info("metrics", address=f"{settings.metrics_host}:{port}")
    try:
        worker.run_forever()
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
