"""The `tuneserve` command line: client subcommands, and server ones delegated to tuneserve_server."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from tuneserve_client import cli_aliases, hyperparameters
from tuneserve_client.cli_feedback import add_feedback_commands
from tuneserve_client.client import DEFAULT_TARGET, Client, tls_credentials
from tuneserve_client.datafiles import (
    DataFileError,
    read_causal_examples,
    read_examples,
    read_preference_examples,
)
from tuneserve_client.errors import TuneserveError
from tuneserve_client.eval_cli import add_eval_commands
from tuneserve_client.reports import DataReport, JobEvent
from tuneserve_client.types import JOB_STATES, Adapter, Generation, Job, ServerInfo

SERVER_COMMANDS = ("serve", "api", "worker", "config", "keys")
EXIT_ERROR = 1  # an RPC failed, or a waited-for job did not succeed
EXIT_USAGE = 2  # bad arguments or data files, server extra missing


# --- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneserve",
        description="Fine-tune LoRA adapters and run predictions on a tuneserve server.",
        epilog="Server commands (with the server installed): " + ", ".join(SERVER_COMMANDS) + ".",
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("TUNESERVE_TARGET") or DEFAULT_TARGET,
        help="server address host:port (default: $TUNESERVE_TARGET or %(default)s)",
    )
    parser.add_argument("--namespace", default="", help="tenant namespace (default: the API key's tenant)")
    parser.add_argument(
        "--timeout", type=_positive_float, default=30.0, help="seconds per RPC (default: %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    tls = parser.add_argument_group("TLS and authentication (each also from its environment variable)")
    tls.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=_env("TUNESERVE_TLS_CA"),
        help="connect with TLS, trusting this PEM CA bundle ($TUNESERVE_TLS_CA)",
    )
    tls.add_argument(
        "--tls-cert",
        metavar="FILE",
        default=_env("TUNESERVE_TLS_CERT"),
        help="client certificate (PEM) for mTLS, with --tls-key ($TUNESERVE_TLS_CERT)",
    )
    tls.add_argument(
        "--tls-key",
        metavar="FILE",
        default=_env("TUNESERVE_TLS_KEY"),
        help="private key (PEM) of --tls-cert ($TUNESERVE_TLS_KEY)",
    )
    tls.add_argument(
        "--api-key",
        metavar="KEY",
        default=_env("TUNESERVE_API_KEY"),
        help="sent as 'authorization: Bearer KEY' with every call ($TUNESERVE_API_KEY)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="submit a training job")
    train.add_argument("--adapter", required=True, help="adapter name to train a new version of")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data",
        metavar="FILE",
        help="training examples (.csv or .jsonl), sent inline; causal LM: prompt and "
        "completion, or a `messages` conversation per JSONL line",
    )
    source.add_argument("--dataset", metavar="ID", help="an uploaded dataset (see `datasets upload`)")
    train.add_argument("--validation", metavar="FILE", help="validation examples (.csv or .jsonl)")
    train.add_argument("--validation-dataset", metavar="ID", help="an uploaded validation dataset")
    train.add_argument("--validation-fraction", type=float, metavar="F")
    train.add_argument(
        "--task",
        default="classification",
        choices=("classification", "causal_lm", "preference"),
        help="what the adapter learns (default: %(default)s; the server serves one family; "
        "preference: DPO on a causal LM, rows with prompt or messages, chosen and rejected)",
    )
    train.add_argument(
        "--text-field",
        metavar="NAME",
        help="CSV column / JSON key of the text (default: text; causal LM: prompt)",
    )
    train.add_argument(
        "--label-field",
        metavar="NAME",
        help="CSV column / JSON key of the label (default: label; causal LM: completion)",
    )
    hyperparameters.add_arguments(train.add_argument_group("hyperparameters (unset: the server's default)"))
    cli_aliases.add_train_arguments(train)
    follow = train.add_mutually_exclusive_group()
    follow.add_argument("--wait", action="store_true", help="wait for the job and print its metrics")
    follow.add_argument(
        "--watch", action="store_true", help="stream the job's events with a live progress bar until it ends"
    )
    train.set_defaults(handler=_cmd_train)

    jobs = commands.add_parser("jobs", help="list, inspect, cancel or wait for jobs")
    jobs_cmds = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    jobs_list = jobs_cmds.add_parser("list", help="list jobs, newest first")
    jobs_list.add_argument(
        "--state",
        action="append",
        type=str.upper,
        choices=JOB_STATES,
        dest="states",
        metavar="S",
        help=f"only jobs in this state (repeatable): {', '.join(JOB_STATES)}",
    )
    jobs_list.add_argument("--adapter", help="only jobs for this adapter")
    jobs_list.set_defaults(handler=_cmd_jobs_list)
    for name, handler, text in (
        ("get", _cmd_jobs_get, "show a job"),
        ("cancel", _cmd_jobs_cancel, "cancel a queued or running job"),
        ("wait", _cmd_jobs_wait, "wait for a job to finish, printing progress"),
        ("watch", _cmd_jobs_watch, "stream a job's events with a live progress bar until it ends"),
    ):
        sub = jobs_cmds.add_parser(name, help=text)
        sub.add_argument("job_id", metavar="ID")
        sub.set_defaults(handler=handler)
        if name == "watch":
            sub.add_argument(
                "--after",
                type=_non_negative_int,
                default=0,
                metavar="SEQ",
                help="only events after this sequence number (resume a watch)",
            )

    datasets = commands.add_parser("datasets", help="upload, list, inspect, check or delete datasets")
    dataset_cmds = datasets.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")
    upload = dataset_cmds.add_parser("upload", help="upload a .csv or .jsonl file; prints its id")
    upload.add_argument("file", metavar="FILE")
    upload.add_argument(
        "--task", default="classification", choices=("classification", "causal_lm", "preference")
    )
    upload.add_argument("--format", choices=("csv", "jsonl"), help="default: from the file suffix")
    upload.add_argument("--name", help="display name (default: the file name)")
    upload.add_argument(
        "--text-field", default="", metavar="NAME", help="column / key of the text (causal LM: the prompt)"
    )
    upload.add_argument(
        "--label-field",
        default="",
        metavar="NAME",
        help="column / key of the label (causal LM: the completion)",
    )
    upload.add_argument(
        "--upload-id",
        metavar="KEY",
        help="resume an interrupted upload by sending the same file with its key",
    )
    upload.set_defaults(handler=_cmd_datasets_upload)
    dataset_cmds.add_parser("list", help="list datasets, newest first").set_defaults(
        handler=_cmd_datasets_list
    )
    for name, handler, text in (
        ("get", _cmd_datasets_get, "show a dataset and its data report"),
        ("delete", _cmd_datasets_delete, "delete a dataset"),
    ):
        sub = dataset_cmds.add_parser(name, help=text)
        sub.add_argument("dataset_id", metavar="ID")
        sub.set_defaults(handler=handler)
    dataset_cmds.add_parser(
        "uploads", help="list unfinished uploads: bytes received and when each is forgotten"
    ).set_defaults(handler=_cmd_datasets_uploads)
    discard = dataset_cmds.add_parser("discard", help="forget an unfinished upload and its bytes")
    discard.add_argument("upload_id", metavar="UPLOAD_ID")
    discard.set_defaults(handler=_cmd_datasets_discard)
    check = dataset_cmds.add_parser(
        "validate", help="run Train's data checks (no job): prints the data report"
    )
    check.add_argument("dataset_id", metavar="ID")
    check.add_argument(
        "--task", default="classification", choices=("classification", "causal_lm", "preference")
    )
    check.add_argument("--validation-dataset", metavar="ID")
    check.add_argument("--validation-fraction", type=float, metavar="F")
    check.set_defaults(handler=_cmd_datasets_validate)

    predict = commands.add_parser("predict", help="classify texts, or generate text on a causal-LM server")
    predict.add_argument("--adapter", default="", help="name or name@version (default: the base model)")
    predict.add_argument("--probabilities", action="store_true", help="also show every label's probability")
    unsure = predict.add_argument_group("uncertainty (classification)")
    unsure.add_argument(
        "--confidence",
        type=float,
        metavar="LEVEL",
        help="also show the conformal prediction set that holds the true label with this probability, e.g. 0.9",
    )
    unsure.add_argument(
        "--conformal-score", choices=("lac", "aps"), default="lac", help="set score (default lac)"
    )
    unsure.add_argument(
        "--conformal-mode",
        choices=("auto", "marginal", "mondrian"),
        default="auto",
        help="per-label (mondrian) or marginal calibration (default auto: mondrian when every label has enough rows)",
    )
    unsure.add_argument(
        "--uncertainty",
        action="store_true",
        help="also show whether to abstain and whether the text is out of domain",
    )
    predict.add_argument(
        "texts",
        nargs="+",
        metavar="TEXT",
        help="texts to classify (or prompts to complete); '-' reads one per line from stdin",
    )
    gen = predict.add_argument_group("generation (causal-LM servers)")
    gen.add_argument("--stream", action="store_true", help="print the text as it is generated")
    gen.add_argument("--max-new-tokens", type=int, metavar="N", help="default: the server's")
    gen.add_argument("--temperature", type=float, metavar="T", help="0: greedy (default)")
    gen.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling, in (0, 1]")
    gen.add_argument("--top-k", type=int, metavar="K", help="keep the K most likely tokens")
    gen.add_argument("--stop", action="append", metavar="TEXT", help="stop sequence (repeatable)")
    gen.add_argument("--seed", type=int, help="same seed, same output")
    gen.add_argument("--raw-prompt", action="store_true", help="send the text as-is, not as a chat user turn")
    gen.add_argument(
        "--logprobs", action="store_true", help="also return each token's log-probability (with --json)"
    )
    gen.add_argument(
        "--top-logprobs", type=int, metavar="K", help="with --logprobs: the K most likely tokens too"
    )
    gen.add_argument(
        "--system",
        metavar="TEXT",
        help="send each text as a chat conversation: this system turn, then the text as the user turn",
    )
    predict.set_defaults(handler=_cmd_predict)

    adapters = commands.add_parser("adapters", help="list, inspect or delete adapters")
    adapter_cmds = adapters.add_subparsers(dest="adapters_command", required=True, metavar="ACTION")
    adapter_cmds.add_parser("list", help="list adapters").set_defaults(handler=_cmd_adapters_list)
    get = adapter_cmds.add_parser("get", help="show an adapter and its versions")
    get.add_argument("name", metavar="NAME")
    get.set_defaults(handler=_cmd_adapters_get)
    delete = adapter_cmds.add_parser("delete", help="delete one version (NAME@VERSION) or all (NAME)")
    delete.add_argument("adapter", metavar="NAME[@VERSION]")
    delete.set_defaults(handler=_cmd_adapters_delete)
    load = adapter_cmds.add_parser("load", help="make an adapter resident on the server (warm-up)")
    load.add_argument("adapter", metavar="NAME[@VERSION]")
    load.add_argument("--pin", action="store_true", help="never evict it (a bare NAME follows new versions)")
    load.set_defaults(handler=_cmd_adapters_load)
    unload = adapter_cmds.add_parser("unload", help="unpin and release an adapter on the server")
    unload.add_argument("adapter", metavar="NAME[@VERSION]")
    unload.set_defaults(handler=_cmd_adapters_unload)

    export = adapter_cmds.add_parser(
        "export",
        help="download a version as peft files (adapter_config.json, adapter_model.safetensors, ...)",
    )
    export.add_argument("adapter", metavar="NAME[@VERSION]")
    export.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="directory to write the files into"
    )
    export.set_defaults(handler=_cmd_adapters_export)
    imp = adapter_cmds.add_parser(
        "import", help="register a new version from a peft directory (or an export, or a .tar.gz)"
    )
    imp.add_argument(
        "source", metavar="DIR", help="a peft save_pretrained directory, an export, or a .tar.gz"
    )
    imp.add_argument("--name", required=True, help="the adapter name the new version belongs to")
    imp.add_argument(
        "--labels", nargs="+", metavar="LABEL", help="classification: labels in the head's output order"
    )
    imp.add_argument("--labels-file", metavar="FILE", help="classification: the labels, one per line")
    imp.add_argument(
        "--head",
        metavar="FILE",
        help="classification: head safetensors (weight, bias), if not DIR/head.safetensors",
    )
    imp.add_argument("--temperature", type=float, help="classification: calibration temperature (default 1)")
    imp.set_defaults(handler=_cmd_adapters_import)
    cli_aliases.add_commands(adapter_cmds, _emit, _table, _time)

    add_feedback_commands(commands)

    health = commands.add_parser("health", help="check the server's health (exit 0 when SERVING)")
    health.add_argument("--service", default="", help="one service, e.g. tuneserve.v1.InferenceService")
    health.set_defaults(handler=_cmd_health)

    info = commands.add_parser("info", help="what the server serves, its limits, auth and features")
    info.set_defaults(handler=_cmd_info)
    add_eval_commands(commands)
    return parser


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


# --- entry point -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (also used as the console script's)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SERVER_COMMANDS:
        return _run_server(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    credentials = None
    if args.tls_ca or args.tls_cert:
        try:
            credentials = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)
        except OSError as exc:
            print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        with Client(
            args.target,
            timeout=args.timeout,
            namespace=args.namespace,
            credentials=credentials,
            api_key=args.api_key,
        ) as client:
            return args.handler(client, args, sys.stdout)
    except TuneserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except DataFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run_server(argv: list[str]) -> int:
    try:
        from tuneserve_server.cli import main as server_main
    except ImportError as exc:
        print(
            f"error: 'tuneserve {argv[0]}' needs the tuneserve server, which is not installed "
            f"(install tuneserve with its server extra; import failed: {exc})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return server_main(argv)


# --- commands ----------------------------------------------------------------------------


def _cmd_health(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    status = client.health(args.service)
    print(json.dumps({"service": args.service, "status": status}) if args.json else status, file=out)
    return 0 if status == "SERVING" else EXIT_ERROR


def _cmd_info(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    info = client.server_info()
    _emit(out, args, info, _describe_server(info))
    return 0


def _cmd_train(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    if args.task == "preference":

        def read(path: str) -> list:
            return read_preference_examples(path, prompt_field=args.text_field or "prompt")
    elif args.task == "causal_lm":

        def read(path: str) -> list:
            return read_causal_examples(
                path,
                prompt_field=args.text_field or "prompt",
                completion_field=args.label_field or "completion",
            )
    else:

        def read(path: str) -> list:
            return read_examples(
                path, text_field=args.text_field or "text", label_field=args.label_field or "label"
            )

    job = client.train(
        args.adapter,
        read(args.data) if args.data else (),
        task=args.task,
        dataset=args.dataset,
        validation=read(args.validation) if args.validation else None,
        validation_dataset=args.validation_dataset,
        validation_fraction=args.validation_fraction,
        **cli_aliases.train_kwargs(args),
        **hyperparameters.from_arguments(args),
    )
    if not args.json and job.data_report and job.data_report.warnings:
        print(_describe_report(job.data_report), file=sys.stderr)
    if not (args.wait or args.watch):
        _emit(out, args, job, job.id)
        return 0
    if not args.json:
        print(job.id, file=out, flush=True)
    return _watch(client, job.id, 0, args, out) if args.watch else _wait(client, job, args, out)


def _cmd_jobs_list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    jobs = list(client.list_jobs(states=args.states, adapter=args.adapter))
    rows = [
        [j.id, j.state, j.adapter_name, _version(j.adapter_version), _steps(j), _time(j.created_at)]
        for j in jobs
    ]
    _emit(out, args, jobs, _table(["ID", "STATE", "ADAPTER", "VERSION", "STEP", "CREATED"], rows))
    return 0


def _cmd_jobs_get(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    job = client.get_job(args.job_id)
    _emit(out, args, job, _describe_job(job))
    return 0


def _cmd_jobs_cancel(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    job = client.cancel_job(args.job_id)
    _emit(out, args, job, f"{job.id} {job.state}")
    return 0


def _cmd_jobs_wait(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    return _wait(client, args.job_id, args, out)


def _cmd_jobs_watch(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    return _watch(client, args.job_id, args.after, args, out)


def _watch(client: Client, job_id: str, after: int, args: argparse.Namespace, out: TextIO) -> int:
    """Events as they come: a progress bar redrawn in place on a terminal (one line per
    update otherwise), and a line for each state change, evaluation, checkpoint, warning
    and error. Exit status: 0 when the job SUCCEEDED."""
    live = out.isatty() and not args.json
    bar_shown = False
    state = ""
    for event in client.watch_job(job_id, after_sequence=after):
        if args.json:
            print(json.dumps(_jsonable(event)), file=out, flush=True)
        elif event.type == "PROGRESS":
            line = _progress_bar(event)
            if live:
                print("\r" + line.ljust(100), end="", file=out, flush=True)
                bar_shown = True
            else:
                print(line, file=out, flush=True)
        else:
            if bar_shown:
                print(file=out)
                bar_shown = False
            print(_event_line(event), file=out, flush=True)
        if event.state:
            state = event.state
    if bar_shown:
        print(file=out)
    if not state:  # resumed after the end: ask for the outcome
        state = client.get_job(job_id).state
    return 0 if state == "SUCCEEDED" else EXIT_ERROR


def _progress_bar(e: JobEvent, width: int = 24) -> str:
    fraction = e.step / e.total_steps if e.total_steps else 0.0
    filled = round(width * min(fraction, 1.0))
    parts = [
        f"[{'#' * filled}{'.' * (width - filled)}] {e.step}/{e.total_steps or '?'}",
        f"{fraction:4.0%}",
        f"epoch {e.epoch}",
    ]
    if e.train_loss is not None:
        parts.append(f"loss {e.train_loss:.4f}")
    if e.learning_rate is not None:
        parts.append(f"lr {e.learning_rate:.2e}")
    if e.examples_per_second:
        parts.append(f"{e.examples_per_second:.1f} ex/s")
    if e.eta_seconds is not None:
        parts.append(f"ETA {_duration(e.eta_seconds)}")
    return "  ".join(parts)


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _event_line(e: JobEvent) -> str:
    stamp = e.time.strftime("%H:%M:%S") if e.time else "--:--:--"
    if e.type == "STATE":
        text = f"{e.state}" + (f": {e.message}" if e.message else "")
    elif e.type == "EVALUATION":
        text = f"evaluation at step {e.step}: " + "  ".join(
            f"{k}={v:.4f}" for k, v in sorted(e.metrics.items())
        )
    else:
        text = f"{e.type.lower()}: {e.message}" + (f" (step {e.step})" if e.step else "")
    return f"{stamp} #{e.sequence} {text}"


def _cmd_datasets_upload(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    dataset = client.upload_dataset(
        args.file,
        task=args.task,
        format=args.format,
        display_name=args.name,
        text_field=args.text_field,
        label_field=args.label_field,
        upload_id=args.upload_id,
    )
    _emit(out, args, dataset, dataset.id)
    if not args.json and dataset.report is not None:
        print(_describe_report(dataset.report), file=sys.stderr)
    return 0


def _cmd_datasets_list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    datasets = list(client.list_datasets())
    rows = [
        [
            d.id,
            d.display_name,
            d.task,
            d.format,
            str(d.usable_rows),
            str(d.rows),
            str(d.size_bytes),
            _time(d.created_at),
        ]
        for d in datasets
    ]
    _emit(
        out,
        args,
        datasets,
        _table(["ID", "NAME", "TASK", "FORMAT", "USABLE", "ROWS", "BYTES", "CREATED"], rows),
    )
    return 0


def _cmd_datasets_get(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    d = client.get_dataset(args.dataset_id)
    text = "\n".join(
        [
            f"id:          {d.id}",
            f"name:        {d.display_name}",
            f"task:        {d.task}",
            f"format:      {d.format}",
            f"rows:        {d.usable_rows} usable of {d.rows}",
            f"size:        {d.size_bytes} bytes",
            f"sha256:      {d.sha256}",
            f"created:     {_time(d.created_at)}",
        ]
        + ([_describe_report(d.report)] if d.report else [])
    )
    _emit(out, args, d, text)
    return 0


def _cmd_datasets_delete(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    client.delete_dataset(args.dataset_id)
    _emit(out, args, {"deleted": args.dataset_id}, f"deleted {args.dataset_id}")
    return 0


def _cmd_datasets_uploads(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    uploads = list(client.list_uploads())
    rows = [
        [
            u.upload_id,
            u.display_name,
            f"{u.received_bytes}/{u.size_bytes}",
            _time(u.last_chunk_at),
            _time(u.expires_at),
        ]
        for u in uploads
    ]
    _emit(out, args, uploads, _table(["UPLOAD_ID", "NAME", "BYTES", "LAST CHUNK", "EXPIRES"], rows))
    return 0


def _cmd_datasets_discard(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    client.discard_upload(args.upload_id)
    _emit(out, args, {"discarded": args.upload_id}, f"discarded upload {args.upload_id}")
    return 0


def _cmd_datasets_validate(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    report = client.validate_dataset(
        args.dataset_id,
        task=args.task,
        validation_dataset=args.validation_dataset,
        validation_fraction=args.validation_fraction,
    )
    _emit(out, args, report, _describe_report(report))
    return 0 if report.ok else EXIT_ERROR


def _describe_report(r: DataReport) -> str:
    lines = [
        f"data:        {r.usable_rows} usable of {r.total_rows} rows"
        + (f" ({r.train_rows} train, {r.validation_rows} validation)" if r.train_rows else ""),
    ]
    if r.dropped:
        lines.append("dropped:     " + ", ".join(f"{n} {reason}" for reason, n in sorted(r.dropped.items())))
    if r.labels:
        lines.append(f"labels:      {len(r.labels)} (imbalance {r.imbalance_ratio:.1f}x)")
    if r.max_tokens:
        lines.append(
            f"tokens:      mean {r.mean_tokens:.1f}, max {r.max_tokens}, {r.truncated_rows} over the limit"
        )
    lines.append(
        f"duplicates:  {r.exact_duplicates} exact, {r.near_duplicates} near; "
        f"{r.conflicting_texts} conflicting; {r.leaked_validation_rows} leaked into validation"
    )
    lines += [f"{i.severity.lower()}: {i.code}: {i.message}" for i in r.issues]
    lines.append("verdict:     " + ("ok" if r.ok else "REFUSED"))
    return "\n".join(lines)


def _cmd_predict(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    texts: list[str] = []
    for text in args.texts:
        if text == "-":
            texts.extend(line.rstrip("\r\n") for line in sys.stdin if line.strip())
        else:
            texts.append(text)
    if not texts:
        print("error: no texts to classify", file=sys.stderr)
        return EXIT_USAGE
    params = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "stop": args.stop,
        "seed": args.seed,
        "raw_prompt": args.raw_prompt,
        "logprobs": args.logprobs,
        "top_logprobs": args.top_logprobs,
    }
    if args.stream or args.system is not None or any(v not in (None, False) for v in params.values()):
        return _generate(client, args, texts, params, out)
    results = client.predict(
        args.adapter or None,
        texts,
        probabilities=args.probabilities,
        confidence=args.confidence,
        conformal_score=args.conformal_score,
        conformal_mode=args.conformal_mode,
        uncertainty=args.uncertainty,
    )
    if results and isinstance(results[0], Generation):  # a causal-LM server answered
        return _print_generations(args, texts, results, out)
    if args.json:
        payload = [dict(_jsonable(r), text=t) for t, r in zip(texts, results)]
        _emit(out, args, payload, "")
        return 0
    for text, result in zip(texts, results):
        columns = [result.label, f"{result.score:.4f}"]
        if args.probabilities:
            columns.append(" ".join(f"{p.label}:{p.score:.4f}" for p in result.probabilities))
        if result.prediction_set is not None:
            columns.append("{" + ",".join(result.prediction_set) + "}")
        if result.abstain is not None:
            columns.append(f"abstain:{result.abstain_reason}" if result.abstain else "answer")
            columns.append(f"ood:{result.ood_score:.1f}{'!' if result.out_of_domain else ''}")
        columns.append(text.replace("\r", "\\r").replace("\n", "\\n"))
        print("\t".join(columns), file=out)
    return 0


def _generate(client: Client, args: argparse.Namespace, texts: list[str], params: dict, out: TextIO) -> int:
    def conversation(text: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": args.system}, {"role": "user", "content": text}]

    chat = args.system is not None
    if chat:
        params = {k: v for k, v in params.items() if k != "raw_prompt"}
    if not args.stream:
        if chat:
            results = [client.chat(args.adapter or None, conversation(t), **params) for t in texts]
        else:
            results = client.generate(args.adapter or None, texts, **params)
        return _print_generations(args, texts, results, out)
    finals = []
    for text in texts:
        how = {"messages": conversation(text)} if chat else {"prompt": text}
        with client.stream(args.adapter or None, **how, **params) as stream:
            for delta in stream:
                if not args.json:
                    print(delta, end="", file=out, flush=True)
            finals.append(stream.final)
        if not args.json:
            print(file=out)
            print(
                f"[{stream.final.finish_reason}: {stream.final.prompt_tokens} prompt + "
                f"{stream.final.completion_tokens} completion tokens]",
                file=sys.stderr,
            )
    if args.json:
        _emit(out, args, [dict(_jsonable(g), input=t) for t, g in zip(texts, finals)], "")
    return 0


def _print_generations(args: argparse.Namespace, texts: list[str], results: list, out: TextIO) -> int:
    if args.json:
        _emit(out, args, [dict(_jsonable(g), input=t) for t, g in zip(texts, results)], "")
        return 0
    for i, g in enumerate(results):
        if len(results) > 1:
            print(f"--- {i + 1} [{g.finish_reason}, {g.completion_tokens} tokens]", file=out)
        print(g.text, file=out)
    return 0


def _cmd_adapters_list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    adapters = list(client.list_adapters())
    rows = [
        [a.name, a.task, _version(a.latest_version), str(len(a.versions)), a.base_model] for a in adapters
    ]
    _emit(out, args, adapters, _table(["NAME", "TASK", "LATEST", "VERSIONS", "BASE MODEL"], rows))
    return 0


def _cmd_adapters_get(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    adapter = client.get_adapter(args.name)
    _emit(out, args, adapter, _describe_adapter(adapter))
    return 0


def _cmd_adapters_delete(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    deleted = client.delete_adapter(args.adapter)
    text = f"deleted {args.adapter}: versions {', '.join(map(str, deleted)) or '(none)'}"
    _emit(out, args, {"adapter": args.adapter, "deleted_versions": deleted}, text)
    return 0


def _cmd_adapters_load(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    r = client.load_adapter(args.adapter, pin=args.pin)
    text = f"{r.name}@{r.version} resident{' (pinned)' if r.pinned else ''}, {r.size_bytes} bytes, loaded in {r.load_seconds:.2f}s"
    _emit(out, args, dataclasses.asdict(r), text)
    return 0


def _cmd_adapters_unload(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    versions = client.unload_adapter(args.adapter)
    text = f"released {args.adapter}: versions {', '.join(map(str, versions)) or '(none resident)'}"
    _emit(out, args, {"adapter": args.adapter, "unloaded_versions": versions}, text)
    return 0


def _cmd_adapters_export(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    done = client.export_adapter(args.adapter, args.output)
    text = f"exported {done.name}@{done.version} to {done.directory}: {', '.join(done.files)}"
    _emit(out, args, done, text)
    return 0


def _cmd_adapters_import(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    labels = list(args.labels or ())
    if args.labels_file:
        labels += [line.strip() for line in Path(args.labels_file).read_text().splitlines() if line.strip()]
    adapter, version = client.import_adapter(
        args.source, args.name, labels=labels or None, head=args.head, temperature=args.temperature
    )
    text = f"imported {adapter.name}@{version} ({adapter.task}, base {adapter.base_model})"
    _emit(out, args, {"adapter": adapter.name, "version": version, "task": adapter.task}, text)
    return 0


def _wait(client: Client, job: Job | str, args: argparse.Namespace, out: TextIO) -> int:
    def progress(update: Job) -> None:
        if not args.json:
            print(_progress_line(update), file=out, flush=True)

    final = client.wait(job, on_update=progress)
    if args.json:
        _emit(out, args, final, "")
    elif final.metrics:
        print(_metrics_line(final.metrics), file=out)
    if final.state != "SUCCEEDED":
        reason = f": {final.error}" if final.error else ""
        print(f"error: job {final.id} {final.state}{reason}", file=sys.stderr)
        return EXIT_ERROR
    return 0


# --- formatting --------------------------------------------------------------------------


def _emit(out: TextIO, args: argparse.Namespace, value: Any, text: str) -> None:
    if args.json:
        print(json.dumps(_jsonable(value), indent=None, sort_keys=False), file=out)
    elif text:
        print(text, file=out)


def _describe_server(info: ServerInfo) -> str:
    lim, q = info.limits, info.quotas
    auth = info.auth_mode
    extra = [
        name
        for name, on in (("jwt", info.auth_jwt), ("client certificates", info.auth_client_certificates))
        if on
    ]
    if extra:
        auth += f" (also {', '.join(extra)})"
    rows = [
        ("base model", info.base_model),
        ("task", info.task),
        ("version", info.version),
        ("auth", auth),
        ("features", ", ".join(info.features) or "-"),
        ("texts per predict", str(lim.max_predict_inputs)),
        ("characters per text", str(lim.max_text_chars)),
        ("training examples per job", str(lim.max_train_examples)),
        ("max LoRA rank", str(lim.max_lora_rank)),
        ("max dataset bytes", str(lim.max_dataset_bytes)),
        ("max request bytes", str(lim.max_request_bytes)),
        ("tokens per sequence", str(lim.max_sequence_tokens)),
    ]
    if lim.max_input_tokens:
        rows.append(("tokens read per input", str(lim.max_input_tokens)))
    if lim.max_new_tokens_limit:
        rows.append(("max new tokens", f"{lim.max_new_tokens_limit} (default {lim.max_new_tokens_default})"))
    quotas = (
        ("active jobs", q.active_jobs),
        ("adapter versions", q.adapter_versions),
        ("dataset bytes", q.dataset_bytes),
        ("upload bytes", q.upload_bytes),
        ("pinned adapters", q.pinned_adapters),
        ("queued predict rows", q.queued_predict_rows),
    )
    rows += [(f"{name} quota", str(value) if value else "unlimited") for name, value in quotas]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in rows)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        result = {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Job):
            result["done"] = value.done
        return result
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _version(value: int) -> str:
    return str(value) if value else "-"


def _steps(job: Job) -> str:
    return f"{job.step}/{job.total_steps}" if job.total_steps else str(job.step)


def _progress_line(job: Job) -> str:
    parts = [f"{job.id} {job.state}"]
    if job.total_steps or job.step:
        parts.append(f"step {_steps(job)}")
        parts.append(f"epoch {job.epoch}")
    if job.train_loss is not None:
        parts.append(f"loss {job.train_loss:.4f}")
    if job.state == "SUCCEEDED" and job.adapter_version:
        parts.append(f"-> {job.adapter_name}@{job.adapter_version}")
    return "  ".join(parts)


def _metrics_line(metrics: dict[str, float]) -> str:
    return "metrics: " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _describe_job(job: Job) -> str:
    lines = [
        f"id:          {job.id}",
        f"namespace:   {job.namespace}",
        f"adapter:     {job.adapter_name}" + (f"@{job.adapter_version}" if job.adapter_version else ""),
        f"task:        {job.task}",
        f"state:       {job.state}",
        f"progress:    step {_steps(job)}, epoch {job.epoch}"
        + (f", loss {job.train_loss:.4f}" if job.train_loss is not None else ""),
        f"examples:    {job.train_examples} train, {job.validation_examples} validation",
        f"attempts:    {job.attempts}",
        f"created:     {_time(job.created_at)}",
        f"started:     {_time(job.started_at)}",
        f"finished:    {_time(job.finished_at)}",
        f"request id:  {job.request_id}",
    ]
    if job.metrics:
        lines.append(_metrics_line(job.metrics))
    if job.error:
        lines.append(f"error:       {job.error}")
    return "\n".join(lines)


def _describe_adapter(adapter: Adapter) -> str:
    lines = [
        f"name:        {adapter.name}",
        f"namespace:   {adapter.namespace}",
        f"task:        {adapter.task}",
        f"base model:  {adapter.base_model}",
        f"latest:      {_version(adapter.latest_version)}",
        f"default:     {_version(adapter.default_version)}",
        "aliases:     " + (", ".join(f"{a}={v}" for a, v in sorted(adapter.aliases.items())) or "-"),
    ]
    rows = [
        [
            str(v.version),
            v.job_id,
            _time(v.created_at),
            str(v.lora_rank or "-"),
            str(len(v.labels)),
            " ".join(f"{k}={m:.4f}" for k, m in sorted(v.metrics.items())),
            "yes" if v.resident else "no",
        ]
        for v in adapter.versions
    ]
    lines += ["", _table(["VERSION", "JOB", "CREATED", "RANK", "LABELS", "METRICS", "RESIDENT"], rows)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
