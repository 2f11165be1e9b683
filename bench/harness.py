"""Shared pieces of the scripts under bench/: a real `tuneserve serve` child process, the
Banking77 files, latency summaries, the machine description, and the rewrite of one
`## ...` section of docs/benchmarks.md.

The scripts run as `python bench/X.py`, so bench/ is on sys.path and they import this
module as `harness`.
"""

from __future__ import annotations

import csv
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
BANKING77 = ROOT / "examples" / "data" / "banking77"
DOCS = ROOT / "docs" / "benchmarks.md"


# --------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), as numpy's default."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples_s: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / mean in milliseconds, and the sample count, of durations in seconds."""
    ms = [s * 1000 for s in samples_s]
    return {
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "mean": sum(ms) / len(ms),
        "n": len(ms),
    }


# --------------------------------------------------------------------------- Banking77
def read_csv(split: str) -> list[tuple[str, str]]:
    """(text, category) rows of examples/data/banking77/{split}.csv, in file order."""
    with open(BANKING77 / f"{split}.csv", newline="") as f:
        return [(row["text"], row["category"]) for row in csv.DictReader(f)]


def training_subset(labels: int | None, per_label: int | None) -> list[tuple[str, str]]:
    """The first `per_label` train rows (file order) of each of the first `labels` labels to
    appear in train.csv. None means no limit: all labels / all rows of each."""
    rows = read_csv("train")
    chosen: list[str] = []
    for _, label in rows:
        if label not in chosen:
            chosen.append(label)
        if labels is not None and len(chosen) == labels:
            break
    counts = dict.fromkeys(chosen, 0)
    out = []
    for text, label in rows:
        if label in counts and (per_label is None or counts[label] < per_label):
            counts[label] += 1
            out.append((text, label))
    return out


# --------------------------------------------------------------------------- server
class Server:
    """`tuneserve serve` (API + supervised trainer worker) as a child process.

    `threads` is passed as `--torch-threads` (None: the server's default); `batch_wait_ms`
    as `--max-batch-wait-ms` (None: the server's default). The server log goes to
    `data_dir.parent / "<role>-<port>.log"`."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        threads: int | None = None,
        batch_wait_ms: float | None = None,
        *,
        auth: str = "none",
        role: str = "serve",
        extra: Sequence[str] = (),
    ) -> None:
        """`auth`: "none" by default, explicitly: these benchmarks measure serving and
        training, not authentication (bench/auth_overhead.py measures that); "api_key" first
        makes an admin key in the server's job store (`tuneserve keys create`), `api_key`."""
        self.port = port
        self.target = f"127.0.0.1:{port}"
        self.log_path = data_dir.parent / f"{role}-{port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNESERVE_")}
        env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        cmd = [
            sys.executable,
            "-m",
            "tuneserve_server.cli",
            role,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ]
        if threads is not None:
            cmd += ["--torch-threads", str(threads)]
        cmd += ["--grace-s", "5", "--worker-poll-s", "1.0", "--registry-poll-s", "0.5"]
        if batch_wait_ms is not None:
            cmd += ["--max-batch-wait-ms", str(batch_wait_ms)]
        cmd += ["--auth", auth, *extra]
        self.cmd = cmd
        self.api_key: str | None = None
        if auth != "none":
            key_cmd = [sys.executable, "-m", "tuneserve_server.cli", "keys", "create", "--tenant", "default"]
            key_cmd += ["--role", "admin", "--description", "bench", "--data-dir", str(data_dir), *extra]
            made = subprocess.run(
                key_cmd,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            self.api_key = made.stdout.strip()
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        log(f"started server pid {self.proc.pid} on {self.target}")

    def wait_serving(self, timeout: float = 180.0) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with code {self.proc.returncode}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"server at {self.target} did not become SERVING in {timeout:g}s")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log("server ignored SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text()[-chars:]
        except OSError:
            return ""


# --------------------------------------------------------------------------- report
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def code_version() -> str:
    """Which tuneserve code ran: the git commit of this checkout, flagged when server/,
    client/ or protos/ have uncommitted changes, and where tuneserve_server was imported from
    when that is not this checkout."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "server", "client", "protos"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        text = f"commit {commit}" + (
            " plus uncommitted changes under server/, client/ or protos/" if dirty else ""
        )
    except (OSError, subprocess.SubprocessError):
        text = "unknown commit (not a git checkout)"
    try:
        import tuneserve_server

        where = Path(tuneserve_server.__file__).resolve()
        if ROOT not in where.parents:
            text += f"; tuneserve_server imported from {where.parent}"
    except ImportError:
        pass
    return text


def command_as_run(script: str, argv: Sequence[str]) -> str:
    """`.venv/bin/python bench/<script> ARGS` as the docs show it: the arguments less --docs
    (where the numbers went is not how they were made)."""
    import shlex

    shown, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--docs":
            skip = True
        elif not a.startswith("--docs="):
            shown.append(a)
    return shlex.join([".venv/bin/python", f"bench/{script}", *shown])


def write_docs(path: Path, section: str, body: str) -> None:
    """Replace the `section` heading line (e.g. "## Predict latency (...)") and everything up
    to the next `## ` heading in `path` with the heading and `body`; append the section when
    the heading is not there yet, and create the file when it does not exist."""
    import fcntl
    import hashlib
    import tempfile

    text_section = f"{section}\n\n{body.strip()}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Several bench scripts may finish at about the same time: hold a lock across the
    # read-modify-write so that one script's section never overwrites another's.
    # The lock file lives in the temp dir, not next to the docs (no stray file in the repo).
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"tuneserve-bench-docs-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            lines = path.read_text().splitlines(keepends=True)
        else:
            lines = [
                "# Benchmarks\n",
                "\n",
                "Numbers measured by the scripts under `bench/`. Each script rewrites only its own\n",
                "section; rerun it to refresh the numbers.\n",
            ]
        start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == section), None)
        if start is None:
            text = "".join(lines).rstrip("\n") + "\n\n" + text_section
        else:
            end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
            before = "".join(lines[:start]).rstrip("\n")
            after = "".join(lines[end:])
            text = (before + "\n\n" if before else "") + text_section + ("\n" + after if after else "")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
