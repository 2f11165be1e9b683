"""Promotion propagation (issue 13): the time from a training job's success, and from an alias
move's RPC return, to every serving replica answering `Predict(name)` with the new version.

Per store (SQLite file, PostgreSQL): one job store and one adapter directory shared by
--replicas `tuneserve api` processes and one `tuneserve worker` process, as
tests/integration/test_alias_replicas_postgres.py sets them up, each process with one torch
thread, auth off, the registry poll at --registry-poll-s (the server default, 0.5 s).

1. --jobs training jobs of one tiny classification adapter (promotion=always). While the worker
   trains, nothing polls the replicas; once the job's row shows its last optimiser step, a
   thread per replica calls Predict(name) in a loop (--gap-ms apart) until that replica answers
   with the new version. Measured per replica: the first such answer's arrival minus the job's
   finished_at (the store's clock, which is this machine's: SQLite's process clock, PostgreSQL's
   now() at the transaction's start, a few ms before its commit). The job's state is read from
   the store directly, not through GetJob: GetJob on a finished job refreshes that replica's
   registry view at once, which would favour it.
2. --moves alias moves of `default` among the versions: PromoteVersion, Rollback and SetAlias in
   turn, each through the next replica in turn, a random pause (0..registry_poll_s) before each
   so that the moves fall at every phase of the replicas' poll clocks. The pollers run through
   the whole phase. Measured per replica: the first answer with the new target arriving after
   the RPC returned, minus the RPC's return.

The first version is a special case: a replica that does not know the name looks again at once
(engine/inference.py resolve), so it is reported on its own row. "Every replica" is the slowest
replica of each event. Predict's round trip (the loop's resolution) is reported beside it.

    .venv/bin/python bench/promotion_propagation.py [--stores sqlite postgres --replicas 3 --jobs 6 --moves 15]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    DOCS,
    code_version,
    command_as_run,
    cpu_model,
    free_port,
    log,
    read_csv,
    training_subset,
    write_docs,
)

SECTION = "## Promotion propagation: job success / alias move to every replica serving it (bench/promotion_propagation.py)"
PROBE = "my card has not arrived yet"
ADAPTER = "propagation"
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


# --------------------------------------------------------------------------- processes
class Role:
    """One `tuneserve <role>` child process, configured through TUNESERVE_* variables."""

    def __init__(
        self, role: str, data_dir: Path, log_dir: Path, port: int, settings: dict[str, object]
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNESERVE_")}
        env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        env.update(
            TUNESERVE_DATA_DIR=str(data_dir),
            TUNESERVE_PORT=str(port),
            TUNESERVE_TORCH_THREADS="1",
            TUNESERVE_METRICS_PORT="0",
            TUNESERVE_WORKER_METRICS_PORT="0",
            TUNESERVE_AUTH="none",  # measuring the registry, not authentication
        )
        env.update({f"TUNESERVE_{k.upper()}": str(v) for k, v in settings.items()})
        self.role, self.port = role, port
        self.target = f"127.0.0.1:{port}"
        self.log_path = log_dir / f"{role}-{port}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tuneserve_server.cli", role],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_serving(self, timeout: float = 300.0) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.role} exited ({self.proc.returncode}): {self.log_path.read_text()[-2000:]}"
                    )
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"{self.target} did not become SERVING in {timeout:g}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# --------------------------------------------------------------------------- polling
@dataclass
class Answer:
    sent: float  # time.time() when the call went out
    received: float  # and when its answer came back
    version: int  # 0: NOT_FOUND


class Poller(threading.Thread):
    """Predict(name) on one replica in a loop, --gap-ms apart, every answer logged."""

    def __init__(self, target: str, gap_s: float) -> None:
        super().__init__(daemon=True)
        import grpc

        from tuneserve.v1 import inference_pb2_grpc

        self.channel = grpc.insecure_channel(target)
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.gap_s = gap_s
        self.answers: list[Answer] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def ask(self) -> Answer:
        import grpc

        from tuneserve.v1 import inference_pb2

        sent = time.time()
        try:
            reply = self.stub.Predict(
                inference_pb2.PredictRequest(adapter=ADAPTER, inputs=[PROBE]), timeout=30
            )
            version = reply.adapter_version
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            version = 0
        return Answer(sent, time.time(), version)

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.answers.append(self.ask())
                time.sleep(self.gap_s)
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def first(self, version: int, after: float) -> Answer | None:
        """The first answer with `version` that arrived after `after`."""
        return next((a for a in self.answers if a.version == version and a.received >= after), None)

    def close(self) -> None:
        self.stopping.set()
        self.join(60)
        self.channel.close()


def wait_all(pollers: list[Poller], version: int, after: float, timeout: float = 60.0) -> list[Answer]:
    deadline = time.monotonic() + timeout
    while True:
        for p in pollers:
            if p.error is not None:
                raise RuntimeError(f"a poller failed: {p.error!r}")
        got = [p.first(version, after) for p in pollers]
        if all(got):
            return got  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every replica served version {version} within {timeout:g}s")
        time.sleep(0.01)


# --------------------------------------------------------------------------- one store
@dataclass
class Measured:
    first_version: list[float] = field(default_factory=list)  # per replica, job 1 only
    job: list[list[float]] = field(default_factory=list)  # per later job: per replica
    job_early: int = 0  # replica answers that were already new at the first poll (upper bounds)
    moves: list[tuple[int, list[float]]] = field(default_factory=list)  # (replica moved on, per replica)
    rtt: list[float] = field(default_factory=list)  # Predict round trips, seconds
    kinds: list[str] = field(default_factory=list)


def open_store(kind: str, url: str, shared: Path):
    if kind == "sqlite":
        from tuneserve_server.storage.sqlite_store import SqliteStore

        return SqliteStore(shared / "jobs.db")
    from tuneserve_server.storage.postgres_store import PostgresStore

    return PostgresStore(url)


def measure_store(kind: str, dsn: str, root: Path, args) -> Measured:
    from tuneserve_client import Client

    shared = root / "shared"
    settings: dict[str, object] = dict(
        adapter_dir=shared / "adapters",
        registry_poll_s=args.registry_poll_s,
        worker_poll_s=0.2,
        worker_lease_s=30,
    )
    if kind == "sqlite":
        settings["job_db"] = shared / "jobs.db"
    else:
        settings["database_url"] = dsn
    procs = [Role("worker", root / "node-w", root, free_port(), settings)]
    time.sleep(3)  # let the worker create and migrate the store before the replicas open it
    apis = [Role("api", root / f"node-{i}", root, free_port(), settings) for i in range(args.replicas)]
    procs += apis
    out = Measured()
    try:
        for api in apis:
            api.wait_serving()
        store = open_store(kind, dsn, shared)
        rows = training_subset(args.labels, 8)
        labels = {label for _, label in rows}
        validation = [(t, label) for t, label in read_csv("test") if label in labels][: 4 * args.labels]
        clients = [Client(api.target, timeout=60) for api in apis]
        try:
            version = 0
            for i in range(args.jobs):
                job = clients[i % len(clients)].train(
                    ADAPTER,
                    rows,
                    validation=validation,
                    promotion="always",
                    epochs=1,
                    seed=i,
                    calibrate=False,
                    fit_uncertainty=False,
                    baseline=False,
                )
                deadline = time.monotonic() + 600
                while True:  # read the store, not GetJob (see the module docstring)
                    row = store.get_job(job.namespace, job.id)
                    done = row.progress.total_steps and row.progress.step >= row.progress.total_steps
                    if row.state.value in TERMINAL or done:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"job {job.id} still {row.state.value}")
                    time.sleep(0.02)
                pollers = [Poller(api.target, args.gap_ms / 1000) for api in apis]
                for p in pollers:
                    p.start()
                try:
                    while (row := store.get_job(job.namespace, job.id)).state.value not in TERMINAL:
                        time.sleep(0.02)
                    if row.state.value != "SUCCEEDED":
                        raise RuntimeError(f"job {job.id} {row.state.value}: {row.error}")
                    version = row.adapter_version
                    answers = wait_all(pollers, version, after=0.0)
                finally:
                    for p in pollers:
                        p.close()
                finished = row.finished_at.timestamp()
                delays = [a.received - finished for a in answers]
                out.job_early += sum(p.answers[0].version == version for p in pollers)
                if i == 0:
                    out.first_version = delays
                else:
                    out.job.append(delays)
                out.rtt += [a.received - a.sent for p in pollers for a in p.answers]
                log(f"{kind}: job {i + 1} -> v{version}: " + ", ".join(f"{d * 1000:.0f} ms" for d in delays))

            latest = version
            pollers = [Poller(api.target, args.gap_ms / 1000) for api in apis]
            for p in pollers:
                p.start()
            try:
                wait_all(pollers, latest, after=0.0)
                rng = random.Random(0)
                current = latest
                for m in range(args.moves):
                    time.sleep(rng.uniform(0, args.registry_poll_s))
                    via = m % len(clients)
                    c = clients[via]
                    other = rng.choice([v for v in range(1, latest + 1) if v != current])
                    if m % 3 == 0:
                        move, _ = c.promote_version(f"{ADAPTER}@{other}", reason=f"bench move {m}")
                        out.kinds.append("PromoteVersion")
                    elif m % 3 == 1:  # back to where the PromoteVersion moved it from
                        move, _ = c.rollback(ADAPTER, reason=f"bench move {m}")
                        out.kinds.append("Rollback")
                    else:
                        move, _ = c.set_alias(f"{ADAPTER}@{other}", "default", reason=f"bench move {m}")
                        out.kinds.append("SetAlias")
                    returned = time.time()
                    if not move.sequence or move.to_version == current:
                        raise RuntimeError(f"move {m} did not move default: {move}")
                    current = move.to_version
                    answers = wait_all(pollers, move.to_version, after=returned)
                    delays = [a.received - returned for a in answers]
                    out.moves.append((via, delays))
                    log(
                        f"{kind}: move {m + 1} ({out.kinds[-1]} via replica {via + 1}) v{move.from_version}"
                        f"->v{move.to_version}: " + ", ".join(f"{d * 1000:.0f} ms" for d in delays)
                    )
            finally:
                for p in pollers:
                    p.close()
            out.rtt += [a.received - a.sent for p in pollers for a in p.answers]
        finally:
            for c in clients:
                c.close()
            store.close()
    finally:
        for proc in procs:
            proc.stop()
    return out


def postgres_schema(admin_dsn: str):
    """A fresh schema (a DSN whose search_path is it), as tests' postgres_dsn fixture makes."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    schema = "tuneserve_bench_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    options = (conninfo_to_dict(admin_dsn).get("options") or "") + f" -c search_path={schema}"

    def drop() -> None:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

    return make_conninfo(admin_dsn, options=options.strip()), drop


# --------------------------------------------------------------------------- report
def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values) * 1000:.0f} / {max(values) * 1000:.0f}"


def table(kind: str, m: Measured, replicas: int) -> list[str]:
    lines = []
    for r in range(replicas):
        jobs = [d[r] for d in m.job]
        others = [d[r] for via, d in m.moves if via != r]
        own = [d[r] for via, d in m.moves if via == r]
        lines.append(
            f"| {kind} | replica {r + 1} | {m.first_version[r] * 1000:.0f} | {len(jobs)}: {ms(jobs)} | "
            f"{len(others)}: {ms(others)} | {len(own)}: {ms(own)} |"
        )
    every_job = [max(d) for d in m.job]
    every_move = [max(d) for _, d in m.moves]
    lines.append(
        f"| {kind} | **every replica** (slowest of each event) | {max(m.first_version) * 1000:.0f} | "
        f"{len(every_job)}: {ms(every_job)} | {len(every_move)}: {ms(every_move)} (any replica moved on) | - |"
    )
    return lines


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stores", nargs="+", choices=("sqlite", "postgres"), default=["sqlite", "postgres"])
    p.add_argument(
        "--postgres-dsn",
        default=os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
        help="an admin DSN: the bench makes a schema of its own there and drops it after",
    )
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--jobs", type=int, default=6, help="training jobs (the first makes version 1)")
    p.add_argument("--moves", type=int, default=15)
    p.add_argument("--labels", type=int, default=5, help="labels of the tiny training set (8 rows each)")
    p.add_argument("--registry-poll-s", type=float, default=0.5)
    p.add_argument("--gap-ms", type=float, default=5.0, help="pause between one replica's Predict calls")
    p.add_argument("--docs", type=Path, default=DOCS)
    args = p.parse_args(argv)
    if args.jobs < 2:
        p.error("--jobs must be at least 2 (the first version is a special case)")

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results: dict[str, Measured] = {}
    for kind in args.stores:
        with tempfile.TemporaryDirectory(prefix=f"propagation-{kind}-") as tmp:
            dsn, drop = postgres_schema(args.postgres_dsn) if kind == "postgres" else ("", lambda: None)
            try:
                results[kind] = measure_store(kind, dsn, Path(tmp), args)
            finally:
                drop()

    lines = [
        "| store | replica | first version: job success -> served (ms) | later jobs: job success -> served, "
        "n: median / max (ms) | alias move made on another replica -> served, n: median / max (ms) | "
        "alias move made on this replica -> served, n: median / max (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for kind, m in results.items():
        lines += table(kind, m, args.replicas)
    notes = []
    bound = args.registry_poll_s
    for kind, m in results.items():
        later = [max(d) for d in m.job]
        moved = [d[r] for via, d in m.moves for r in range(args.replicas) if r != via]
        notes.append(
            f"- {kind}: Predict round trip (the loop's resolution) median {statistics.median(m.rtt) * 1000:.1f} ms, "
            f"max {max(m.rtt) * 1000:.0f} ms over {len(m.rtt)} calls; every replica served a job's version "
            f"{max(later) / bound:.2f}x registry_poll_s after its success at the worst ({max(later) * 1000:.0f} ms), "
            f"an alias move reached the other replicas {max(moved) / bound:.2f}x registry_poll_s at the worst "
            f"({max(moved) * 1000:.0f} ms, median {statistics.median(moved) / bound:.2f}x); "
            f"{m.job_early} replica answer(s) were already the new version at the first poll after the job's "
            "last step (those delays are upper bounds)."
        )
    kinds = next(iter(results.values())).kinds
    body = "\n".join(
        [
            f"`{command_as_run('promotion_propagation.py', argv)}` — measured {started}, {code_version()}, "
            f"{cpu_model()} (2 cores shared with other work), {args.replicas} API replicas + 1 trainer worker "
            f"as separate processes (one torch thread each, auth off), registry_poll_s={bound:g} (the default), "
            f"Predict polled {args.gap_ms:g} ms apart per replica. {args.jobs} training jobs "
            f"(promotion=always, {args.labels} labels x 8 rows, 1 epoch), then {len(kinds)} alias moves of "
            f"`default` ({', '.join(sorted(set(kinds)))} in turn), each through the next replica in turn, after "
            f"a random 0-{bound:g} s pause.",
            "",
            *lines,
            "",
            *notes,
            "",
            "What a replica does (engine/inference.py, engine/catalog.py): it polls the registry every "
            "`registry_poll_s`; a Predict for a name it does not know looks again at once (so version 1 is "
            "served without waiting for a poll); the replica that handled an alias RPC refreshes at once; "
            "the first Predict after a switch also loads the new version (the old one is unloaded when "
            "`default` leaves it), which is inside these times. The expected bound is therefore about "
            "registry_poll_s plus one adapter load plus one Predict. Job times are measured from the "
            "store's finished_at (the worker publishes the version, moves `default` and marks the job "
            "SUCCEEDED in one transaction); on PostgreSQL now() is the transaction's start, a few ms "
            "before the commit, so those times are a few ms long. On PostgreSQL the store also sends "
            "`NOTIFY tuneserve_registry` at every registry change, but no replica listens to it "
            "(`PostgresStore.registry_listener` is used by tests and bench/job_queue.py only), so both "
            "stores measure the poll. Noise: 2 shared cores carry "
            f"{args.replicas} replicas, their pollers and (during jobs) the worker.",
        ]
    )
    print(body)
    write_docs(args.docs, SECTION, body)


if __name__ == "__main__":
    main(sys.argv[1:])
