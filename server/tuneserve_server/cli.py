"""Server-side commands of the `tuneserve` console script: serve, api, worker, config show.

Every setting is a flag (`--max-batch-rows 32`) and a TUNESERVE_* variable; flags win."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from dataclasses import MISSING, fields

from tuneserve_server.config import ConfigError, Settings, load_settings

SERVER_COMMANDS = ("serve", "api", "worker", "config")


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
    return parser


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
    from tuneserve_server.app import run_api

    try:
        asyncio.run(run_api(settings, with_worker=args.command == "serve" and settings.spawn_worker))
    except ConfigError as exc:
        print(f"tuneserve: invalid configuration: {exc}", file=sys.stderr)
        return 2
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
