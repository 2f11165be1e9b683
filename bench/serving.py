"""Serving many LoRA adapters on one MiniLM base: throughput, latency, mixing cost, bf16,
cold loads and memory, against the naive one-request-at-a-time baseline.

One run, all on this machine:

 1. Setup (in this process, no server): train ONE real Banking77 adapter with the service's
    own recipe (`ClassificationRecipe`, a job in a real `SqliteStore`, claimed like a worker
    claims it), then publish --adapters distinct adapters `bench-a00`..: `bench-a00` is the
    trained adapter as is, the others are copies with small Gaussian noise added to their
    LoRA B matrices (same labels, different weights). Each one is a job in the job store and
    a version in the `LocalAdapterStore` (checksum manifest), registered with
    `complete_job` exactly as `training/worker.py` does it.
 2. `tuneserve api` (no worker) on free localhost ports, float32, default batching and torch
    threads, `--max-resident-adapters 64`.
 3. Memory: the server's /metrics (`tuneserve_process_resident_memory_bytes`,
    `tuneserve_adapters_resident_bytes`) with 0 adapters resident, then 1, 8, 32, 64 (each
    made resident with LoadAdapter; the first load of each is timed too).
 4. Throughput: --clients threads here, one `tuneserve_client.Client` (own channel) each,
    send 1-text Predict calls one after another; request n (thread t, its j-th call,
    n = t + clients*j) names adapter n % K and text n of test.csv. For K = 1, 8, 64:
    --warmup s untimed, then --seconds s timed; throughput = calls completed in the window /
    window; p50/p99 of their latency. The server's own metrics (batches, rows per batch,
    forward time, queue time) are diffed over the same window.
 5. Cold loads: UnloadAdapter then LoadAdapter for --cold-n adapters; `load_seconds` from
    the response (store -> resident: open + checksum verify + LoRA factors into the bank + head).
 6. Accuracy of `bench-a00` on all 3,080 Banking77 test queries (Predict, 64 per call).
 7. The server stops; the naive baseline runs in this process on the idle machine:
    transformers AutoModel + peft PeftModel with the first 8 adapters (`load_adapter`), one
    request at a time: `set_adapter(name)`, tokenize one text, forward, mean pool, that
    adapter's head, softmax. Same request sequence, same warm-up and window. Then a short
    in-process profile of one 16-row forward with 1 / 8 / 16 distinct adapters
    (peft's `adapter_names=`, and the server's gathered LoRA bank).
 8. `tuneserve api --serving-dtype bfloat16`: K = 8 throughput and the same accuracy run.

Prints the tables and rewrites the "## Serving: many adapters" section of
docs/benchmarks.md. The server process and temp dir are removed even on failure. By default
it first waits (up to --max-wait-min, polling every 30 s) for the 1-minute load average to
drop below --quiet-load, since the machine is shared.

    .venv/bin/python bench/serving.py                                   # the full run (~10 min)
    .venv/bin/python bench/serving.py --seconds 2 --warmup 1 --k 1,8 --no-wait --no-docs  # quick check
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import warnings
from pathlib import Path

# bench/harness.py: bench/ is already on sys.path when run as `python bench/serving.py`;
# the insert covers other ways of loading this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    DOCS,
    Server,
    code_version,
    cpu_model,
    free_port,
    log,
    percentile,
    read_csv,
    training_subset,
    write_docs,
)

SECTION = "## Serving: many adapters (bench/serving.py)"
NAMESPACE = "default"
PREFIX = "bench-a"
PREDICT_BATCH = 64
BASELINE_ADAPTERS = 8
PROFILE_ROWS = 16
MB = 1024 * 1024

# Measured in-process on this machine earlier (quoted from the issue, not re-measured here).
REFERENCES = (
    ("one request at a time, set_adapter per request, 8 adapters", "72 req/s"),
    ("peft mixed-adapter batches of 32, float32, 8 adapters", "177 req/s"),
    ("the same batches of 32, a single adapter", "229 req/s"),
)


def adapter_name(i: int) -> str:
    return f"{PREFIX}{i:02d}"


# --------------------------------------------------------------------------- server
class ApiServer(Server):
    """`tuneserve api` (no trainer worker) as a child process; the harness's Server supplies
    wait_serving / stop / log_tail. Adds a /metrics port and the serving settings under test."""

    def __init__(
        self,
        data_dir: Path,
        *,
        dtype: str,
        max_resident: int,
        threads: int = 0,
        packed: bool = True,
        device: str = "cpu",
    ) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.path = "packed" if packed else "padded"
        self.log_path = data_dir.parent / f"api-{dtype}-{self.path}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNESERVE_")}
        env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        self.cmd = [
            sys.executable,
            "-m",
            "tuneserve_server.cli",
            "api",
            # Explicitly no auth: this measures serving, not authentication
            # (bench/auth_overhead.py measures what a key costs per call).
            "--auth",
            "none",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(data_dir),
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(self.metrics_port),
            "--max-resident-adapters",
            str(max_resident),
            "--serving-dtype",
            dtype,
            "--grace-s",
            "5",
            "--registry-poll-s",
            "0.5",
            "--torch-threads",
            str(threads),
            # padded: one padded batch per forward, the code path before issue #18 (main's);
            # packed: the batch's real tokens only (engine/packed.py), the default now.
            "--classify-packed",
            "true" if packed else "false",
            "--device",
            device,
        ]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        log(
            f"started tuneserve api ({dtype}, {self.path}) pid {self.proc.pid} on {self.target}, metrics :{self.metrics_port}"
        )

    def metrics(self) -> dict[str, float]:
        """One scrape of /metrics: {'name{labels}': value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                pass
        return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def metric_delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


# --------------------------------------------------------------------------- setup
def build_adapters(
    data_dir: Path, work: Path, count: int, per_label: int, epochs: int, seed: int, noise: float
) -> dict[str, object]:
    """Train bench-a00 with the real recipe as a real job, publish it and `count - 1` noisy
    copies through the real stores. Returns facts about the training for the report."""
    import torch
    from safetensors.torch import load_file, save_file

    from tuneserve_server.domain.jobs import TaskType
    from tuneserve_server.domain.limits import TrainLimits
    from tuneserve_server.domain.records import AdapterVersionRecord
    from tuneserve_server.modeling import ADAPTER_META, DEFAULT_TARGETS, resolve_base_model
    from tuneserve_server.storage.local_adapter_store import LocalAdapterStore
    from tuneserve_server.storage.sqlite_store import SqliteStore
    from tuneserve_server.training.classification import ClassificationRecipe
    from tuneserve_server.training.recipe import RecipeContext
    from tuneserve_server.training.validation import TrainInput, build_job_spec

    store = SqliteStore(data_dir / "jobs.db")
    adapters = LocalAdapterStore(data_dir / "adapters")
    source = resolve_base_model("minilm")
    targets = DEFAULT_TARGETS["bert"]
    limits = TrainLimits(
        served_task=TaskType.CLASSIFICATION,
        base_model=source.model_id,
        max_train_examples=100_000,
        max_text_chars=4096,
        max_lora_rank=64,
        linear_modules=frozenset(targets),
        default_targets=targets,
    )
    examples = training_subset(None, per_label)
    worker_id = f"bench-serving-{os.getpid()}"

    def job_for(name: str):
        spec = build_job_spec(
            TrainInput(
                namespace=NAMESPACE,
                adapter_name=name,
                task=TaskType.CLASSIFICATION,
                request_id=f"bench-serving-{name}-{uuid.uuid4().hex[:8]}",
                train=examples,
                validation=[],
                validation_fraction=0.1,
                optimizer={"epochs": epochs, "seed": seed},
            ),
            limits,
        )
        job, _ = store.create_job(spec)
        claimed = store.claim_job(worker_id, 3600)
        if claimed is None or claimed[0].id != job.id:
            raise RuntimeError("the bench's job store had another queued job")
        return claimed

    def publish(job, spec, staged: Path, metrics: dict[str, float], meta) -> None:
        version = store.reserve_adapter_version(spec.namespace, spec.adapter_name)
        size = adapters.publish(staged, spec.namespace, spec.adapter_name, version)
        store.complete_job(
            job.id,
            worker_id,
            metrics,
            AdapterVersionRecord(
                namespace=spec.namespace,
                name=spec.adapter_name,
                version=version,
                job_id=job.id,
                task=spec.task,
                base_model=meta.base_model,
                labels=meta.labels,
                metrics=metrics,
                lora_rank=meta.lora_rank,
                size_bytes=size,
                created_at=job.created_at,
            ),
        )

    # ---- the one real training job
    t0 = time.monotonic()
    job, spec = job_for(adapter_name(0))
    staging = adapters.staging_dir()
    recipe = ClassificationRecipe(RecipeContext(spec, source, device="cpu", job_id=job.id))
    result = recipe.run(staging)
    examples_seen = recipe.examples_seen
    total_steps = -(-len(spec.train) // spec.hyperparameters.optimizer.batch_size) * epochs
    del recipe
    gc.collect()
    train_s = time.monotonic() - t0
    pristine = work / "trained"
    shutil.copytree(staging, pristine)
    publish(job, spec, staging, result.metrics, result.meta)
    log(
        f"trained {adapter_name(0)}: {len(spec.train)} train / {len(spec.validation)} validation examples, "
        f"{total_steps} steps, {train_s:.0f}s, validation accuracy {result.metrics['accuracy']:.3f}"
    )

    # ---- noisy copies, each its own job and version
    t1 = time.monotonic()
    for i in range(1, count):
        job_i, spec_i = job_for(adapter_name(i))
        staged = adapters.staging_dir()
        for item in pristine.iterdir():
            shutil.copy2(item, staged / item.name)
        weights = staged / "adapter_model.safetensors"
        tensors = load_file(str(weights))
        gen = torch.Generator().manual_seed(1000 + i)
        for key, value in tensors.items():
            if "lora_B" in key:
                tensors[key] = value + torch.randn(value.shape, generator=gen, dtype=value.dtype) * (
                    noise * float(value.float().std())
                )
        save_file(tensors, str(weights), metadata={"format": "pt"})
        meta_json = json.loads((staged / ADAPTER_META).read_text())
        meta_json["job_id"] = job_i.id
        (staged / ADAPTER_META).write_text(json.dumps(meta_json, indent=2))
        publish(job_i, spec_i, staged, result.metrics, result.meta)
    log(f"published {count} adapters ({count - 1} noisy copies in {time.monotonic() - t1:.1f}s)")
    store.close()
    return {
        "train_examples": len(spec.train),
        "validation_examples": len(spec.validation),
        "steps": total_steps,
        "examples_seen": examples_seen,
        "train_seconds": train_s,
        "validation_accuracy": result.metrics["accuracy"],
        "labels": len(result.meta.labels),
        "adapter_file_bytes": sum(p.stat().st_size for p in pristine.iterdir()),
        "lora_rank": result.meta.lora_rank,
        "lora_targets": list(result.meta.target_modules),
    }


def adapter_dir(data_dir: Path, i: int) -> Path:
    return data_dir / "adapters" / NAMESPACE / adapter_name(i) / "1"


# --------------------------------------------------------------------------- load
def drive(
    target: str,
    refs: list[str],
    texts: list[str],
    clients: int,
    warmup_s: float,
    seconds: float,
    server: ApiServer | None = None,
) -> dict[str, object]:
    """`clients` threads, one Client each, 1-text Predict calls back to back. Returns
    throughput and latency over the timed window (calls completed inside it), and the
    server's metrics diffed over the window."""
    from tuneserve_client import Client

    barrier = threading.Barrier(clients + 1, timeout=300)
    go = threading.Event()
    clock: dict[str, float] = {}
    done: list[list[tuple[float, float]]] = [[] for _ in range(clients)]
    errors: list[str] = []

    def worker(t: int) -> None:
        with Client(target, timeout=60, options=[("grpc.use_local_subchannel_pool", 1)]) as client:
            try:
                for j in range(2):  # connect, then one more call: channel and adapter warm
                    client.predict(refs[(t + j) % len(refs)], [texts[(t + j) % len(texts)]])
            except Exception as exc:
                errors.append(f"connect: {type(exc).__name__}: {exc}")
                barrier.abort()  # fail the run now instead of timing a partial load
                raise
            barrier.wait()  # every client connected and warm ...
            go.wait()  # ... and only then the clock is set (after the barrier, in the caller)
            end = clock["end"]
            j = 0
            mine = done[t]
            while True:
                n = t + clients * j
                j += 1
                t0 = time.perf_counter()
                if t0 >= end:
                    return
                try:
                    client.predict(refs[n % len(refs)], [texts[n % len(texts)]])
                except Exception as exc:  # count it, keep going
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                mine.append((t0, time.perf_counter()))

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(clients)]
    for th in threads:
        th.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        raise RuntimeError(f"a client could not connect: {errors[:1]}") from None
    clock["from"] = time.perf_counter() + warmup_s
    clock["end"] = clock["from"] + seconds
    go.set()
    time.sleep(max(0.0, clock["from"] - time.perf_counter()))
    m0 = server.metrics() if server else {}
    cpu0 = (cpu_seconds(os.getpid()), cpu_seconds(server.proc.pid) if server else float("nan"))
    time.sleep(max(0.0, clock["end"] - time.perf_counter()))
    cpu1 = (cpu_seconds(os.getpid()), cpu_seconds(server.proc.pid) if server else float("nan"))
    m1 = server.metrics() if server else {}
    for th in threads:
        th.join()
    lat = [e - s for calls in done for s, e in calls if clock["from"] <= e <= clock["end"]]
    out: dict[str, object] = {
        "calls": len(lat),
        "rps": len(lat) / seconds,
        "p50": percentile(lat, 50) * 1000 if lat else float("nan"),
        "p99": percentile(lat, 99) * 1000 if lat else float("nan"),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "client_cpu": (cpu1[0] - cpu0[0]) / seconds,  # cores busy in this (client) process
        "server_cpu": (cpu1[1] - cpu0[1]) / seconds,
    }
    if server:
        batches = metric_delta(m0, m1, "tuneserve_forward_seconds_count")
        taken = metric_delta(m0, m1, "tuneserve_batch_rows_count")  # batches formed (may differ by one)
        rows = metric_delta(m0, m1, "tuneserve_batch_rows_sum")
        qn = metric_delta(m0, m1, "tuneserve_predict_queue_seconds_count")
        rpc_n = metric_delta(m0, m1, 'tuneserve_rpc_latency_seconds_count{method="Predict"}')
        forward_s = metric_delta(m0, m1, "tuneserve_forward_seconds_sum")
        out.update(
            batches=batches,
            rows_per_batch=div(rows, taken),
            adapters_per_batch=div(
                metric_delta(m0, m1, "tuneserve_batch_adapters_sum"),
                metric_delta(m0, m1, "tuneserve_batch_adapters_count"),
            ),
            forward_ms=forward_s / batches * 1000 if batches else float("nan"),
            forward_busy=forward_s / seconds,
            queue_ms=metric_delta(m0, m1, "tuneserve_predict_queue_seconds_sum") / qn * 1000
            if qn
            else float("nan"),
            rpc_ms=(
                metric_delta(m0, m1, 'tuneserve_rpc_latency_seconds_sum{method="Predict"}') / rpc_n * 1000
                if rpc_n
                else float("nan")
            ),
        )
    return out


def throughput_by_k(
    server: ApiServer, ks: list[int], texts: list[str], args, phase, label: str
) -> dict[int, dict]:
    """drive() at each K (all K adapters made resident first) on `server`."""
    from tuneserve_client import Client

    out: dict[int, dict] = {}
    with Client(server.target, timeout=300) as client:
        for k in ks:
            refs = [adapter_name(i) for i in range(k)]
            for ref in refs:
                client.load_adapter(ref)
            phase(f"{label} K={k}")
            r = drive(server.target, refs, texts, args.clients, args.warmup, args.seconds, server)
            out[k] = r
            log(
                f"{label} K={k}: {r['rps']:.1f} req/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
                f"{r['rows_per_batch']:.1f} rows/batch, forward {r['forward_ms']:.1f} ms, errors {r['errors']}"
            )
    return out


def padded_server_run(
    data_dir: Path, args, dtype: str, ks: list[int], texts: list[str], phase
) -> dict[int, dict]:
    """The same throughput runs on a fresh server with `--classify-packed false`: main's
    padded forward, measured in the same run as the packed one (the before/after table)."""
    phase(f"{dtype} padded server")
    server = ApiServer(
        data_dir,
        dtype=dtype,
        max_resident=args.max_resident,
        threads=args.threads,
        packed=False,
        device=args.device,
    )
    try:
        server.wait_serving()
        return throughput_by_k(server, ks, texts, args, phase, f"{dtype} padded")
    except BaseException:
        tail = server.log_tail()
        if tail:
            print(f"--- padded server log (tail) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        server.stop()


def hardware_figures(texts: list[str], setup: dict, reps: int, device: str = "cpu") -> dict[str, float]:
    """This machine's matmul rate (float32, bfloat16), the FLOPs a real Banking77 token costs
    through MiniLM with the bench adapters' LoRA, and what tokenising a 16-row batch costs
    next to its packed forward (where tokenisation runs: see the thread plan)."""
    import torch
    from hardware import encoder_flops_per_token, matmul_rate

    from tuneserve_server.modeling import load_encoder, resolve_base_model

    tok, model = load_encoder(resolve_base_model("minilm"), "cpu")
    lengths = [len(x) for x in tok(texts, truncation=True, max_length=128)["input_ids"]]
    mean_tokens = sum(lengths) / len(lengths)
    flops = encoder_flops_per_token(model, mean_tokens, setup["lora_rank"], setup["lora_targets"])
    rows = texts[:PROFILE_ROWS]
    tokenize = []
    for _ in range(reps + 2):
        t0 = time.perf_counter()
        tok(rows, truncation=True, max_length=128)
        tokenize.append(time.perf_counter() - t0)
    return {
        "f32_rate": matmul_rate("float32", device, 4096 if device.startswith("cuda") else 1024),
        "bf16_rate": matmul_rate("bfloat16", device, 4096 if device.startswith("cuda") else 1024),
        "size": 4096 if device.startswith("cuda") else 1024,
        "mean_tokens": mean_tokens,
        "flops_per_token": flops["total"],
        "flops_linear": flops["linear"],
        "flops_lora": flops["lora"],
        "flops_attention": flops["attention"],
        "tokenize_ms": percentile(tokenize[2:], 50) * 1000,
        "threads": torch.get_num_threads(),
    }


def bound_fraction(res, r: dict, dtype: str) -> float:
    """Achieved FLOP/s (real tokens only) over this machine's measured matmul rate."""
    hw = res.get("hw")
    if not hw or not r:
        return float("nan")
    rate = hw["bf16_rate"] if dtype == "bfloat16" else hw["f32_rate"]
    return r["rps"] * hw["mean_tokens"] * hw["flops_per_token"] / rate


def accuracy(client, ref: str, rows: list[tuple[str, str]]) -> tuple[float, list[str], float]:
    """Test accuracy of `ref` over `rows`, its predicted labels, and the seconds it took."""
    t0 = time.perf_counter()
    predicted: list[str] = []
    for i in range(0, len(rows), PREDICT_BATCH):
        predicted += [
            p.label for p in client.predict(ref, [t for t, _ in rows[i : i + PREDICT_BATCH]], timeout=300)
        ]
    correct = sum(p == y for p, (_, y) in zip(predicted, rows, strict=True))
    return correct / len(rows), predicted, time.perf_counter() - t0


def memory_curve(server: ApiServer, client, points: list[int]) -> tuple[list[dict[str, float]], list[float]]:
    """From a fresh server (nothing resident): RSS and adapter bytes at 0 and at each point,
    loading adapters 0.. in order. Returns the rows and each first load's load_seconds."""

    def row(n: int) -> dict[str, float]:
        gc.collect()
        time.sleep(0.3)
        m = server.metrics()
        return {
            "resident": n,
            "rss": m.get("tuneserve_process_resident_memory_bytes", float("nan")),
            "adapter_bytes": m.get("tuneserve_adapters_resident_bytes", float("nan")),
            "count": m.get("tuneserve_adapters_resident", float("nan")),
        }

    rows = [row(0)]
    first_loads: list[float] = []
    loaded = 0
    for target_n in points:
        while loaded < target_n:
            first_loads.append(client.load_adapter(adapter_name(loaded)).load_seconds)
            loaded += 1
        rows.append(row(loaded))
    return rows, first_loads


# --------------------------------------------------------------------------- in-process
class NaiveBaseline:
    """What a user would write without the service: transformers + peft, every adapter
    loaded into one PeftModel, one request at a time with set_adapter per request."""

    def __init__(self, dirs: dict[str, Path], device: str = "cpu") -> None:
        import torch
        import transformers
        from peft import PeftModel
        from transformers import AutoModel, AutoTokenizer

        from tuneserve_server.modeling import AdapterMeta, load_head, resolve_base_model

        transformers.utils.logging.disable_progress_bar()
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        self.torch = torch
        self.device = device
        source = resolve_base_model("minilm")
        self.tokenizer = AutoTokenizer.from_pretrained(source.path)
        base = AutoModel.from_pretrained(source.path).eval()
        self.base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
        names = list(dirs)
        self.model = PeftModel.from_pretrained(base, str(dirs[names[0]]), adapter_name=names[0])
        for name in names[1:]:
            self.model.load_adapter(str(dirs[name]), adapter_name=name)
        self.model.to(device).eval()
        self.heads = {name: load_head(d, device) for name, d in dirs.items()}
        self.labels = {name: AdapterMeta.read(d).labels for name, d in dirs.items()}

    def add(self, name: str, directory: Path) -> None:
        from tuneserve_server.modeling import AdapterMeta, load_head

        self.model.load_adapter(str(directory), adapter_name=name)
        self.model.to(self.device).eval()
        self.heads[name] = load_head(directory, self.device)
        self.labels[name] = AdapterMeta.read(directory).labels

    def predict(self, name: str, text: str) -> tuple[str, float]:
        from tuneserve_server.modeling import mean_pool

        torch = self.torch
        self.model.set_adapter(name)
        with torch.inference_mode():
            enc = self.tokenizer([text], padding=True, truncation=True, max_length=128, return_tensors="pt")
            enc = enc.to(self.device)
            hidden = self.model(**enc).last_hidden_state
            probs = torch.softmax(self.heads[name](mean_pool(hidden, enc["attention_mask"])), -1)[0]
            i = int(probs.argmax())
        return self.labels[name][i], float(probs[i])

    def build_bank(self, dirs: dict[str, Path], dtype_name: str = "float32") -> None:
        """A second copy of the base with the server's gathered LoRA bank holding `dirs`."""
        from transformers import AutoModel

        from tuneserve_server.engine.lora_batched import LoraBank, read_lora
        from tuneserve_server.modeling import module_names, resolve_base_model

        dtype = getattr(self.torch, dtype_name)
        encoder = AutoModel.from_pretrained(resolve_base_model("minilm").path).eval().to(self.device, dtype)
        self.bank = LoraBank(encoder, module_names(encoder), capacity=len(dirs), dtype=dtype)
        for name, directory in dirs.items():
            self.bank.install(name, read_lora(directory, dtype=dtype, module_paths=self.bank.module_paths()))
        self.bank_model = encoder

    def forward_bank(self, texts: list[str], adapter_names: list[str]) -> None:
        with self.torch.inference_mode(), self.bank.selecting(adapter_names, self.device):
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            self.bank_model(**enc.to(self.device))
        self.sync()

    def forward_bank_packed(self, texts: list[str], adapter_names: list[str], per_run: bool = False) -> None:
        """The server's packed forward (engine/packed.py) through the same bank. `per_run`:
        LoRA as one product pair per run of one adapter's tokens, however many adapters the
        batch mixes (what main did before the batched products for many adapters)."""
        from tuneserve_server.engine.packed import packed_forward

        default = self.bank.loop_max_adapters
        if per_run:
            self.bank.loop_max_adapters = 10**6
        try:
            with self.torch.inference_mode():
                ids = self.tokenizer(texts, truncation=True, max_length=128)["input_ids"]
                order = sorted(range(len(ids)), key=lambda i: adapter_names[i])
                ids = [ids[i] for i in order]
                with self.bank.selecting_tokens([adapter_names[i] for i in order], [len(x) for x in ids]):
                    packed_forward(self.bank_model, ids, self.device)
        finally:
            self.bank.loop_max_adapters = default
        self.sync()

    def sync(self) -> None:
        """Wait for queued GPU work, so the profile times what ran (a no-op on the CPU)."""
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def forward_rows(self, texts: list[str], adapter_names: list[str] | None) -> None:
        """One forward of `texts` (encoder only), with peft's mixed-batch `adapter_names`, or
        with the active adapter when None."""
        with self.torch.inference_mode():
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            enc = enc.to(self.device)
            if adapter_names is None:
                self.model(**enc)
            else:
                self.model(**enc, adapter_names=adapter_names)
        self.sync()


def run_baseline(
    model: NaiveBaseline, refs: list[str], texts: list[str], warmup_s: float, seconds: float
) -> dict[str, object]:
    n = 0
    start = time.perf_counter()
    t_from = start + warmup_s
    t_end = t_from + seconds
    lat: list[float] = []
    while True:
        t0 = time.perf_counter()
        if t0 >= t_end:
            break
        model.predict(refs[n % len(refs)], texts[n % len(texts)])
        t1 = time.perf_counter()
        if t1 >= t_from and t1 <= t_end:
            lat.append(t1 - t0)
        n += 1
    return {
        "calls": len(lat),
        "rps": len(lat) / seconds,
        "p50": percentile(lat, 50) * 1000,
        "p99": percentile(lat, 99) * 1000,
        "errors": 0,
    }


def profile_mixing(model: NaiveBaseline, texts: list[str], reps: int) -> list[tuple[str, float, float]]:
    """Median ms of one PROFILE_ROWS-row encoder forward, by how the rows name adapters;
    cases interleaved rep by rep. Returns (case, median ms, ms per row)."""
    names = sorted(model.heads)
    rows = texts[:PROFILE_ROWS]
    model.model.set_adapter(names[0])
    r = PROFILE_ROWS
    cases = {
        f"{r} rows, 1 adapter, set_adapter (no adapter_names)": None,
        f"{r} rows, 1 adapter via adapter_names": [names[0]] * r,
        f"{r} rows, 8 adapters via adapter_names": [names[i % 8] for i in range(r)],
        f"{r} rows, {r} adapters via adapter_names": [names[i % r] for i in range(r)],
        f"{r} rows, 1 adapter, gathered bank (the server)": ("bank", [names[0]] * r),
        f"{r} rows, 8 adapters, gathered bank (the server)": ("bank", [names[i % 8] for i in range(r)]),
        f"{r} rows, {r} adapters, gathered bank (the server)": ("bank", [names[i % r] for i in range(r)]),
        f"{r} rows, 1 adapter, gathered bank, packed (the server now)": ("packed", [names[0]] * r),
        f"{r} rows, 8 adapters, gathered bank, packed (the server now)": (
            "packed",
            [names[i % 8] for i in range(r)],
        ),
        f"{r} rows, {r} adapters, gathered bank, packed (the server now)": (
            "packed",
            [names[i % r] for i in range(r)],
        ),
        f"{r} rows, 8 adapters, packed, one LoRA product pair per adapter run (main before)": (
            "per-run",
            [names[i % 8] for i in range(r)],
        ),
        f"{r} rows, {r} adapters, packed, one LoRA product pair per adapter run (main before)": (
            "per-run",
            [names[i % r] for i in range(r)],
        ),
        "1 row, 1 adapter, set_adapter": "single",
    }

    def call(arg) -> None:
        if arg == "single":
            model.forward_rows(rows[:1], None)
        elif isinstance(arg, tuple) and arg[0] in ("packed", "per-run"):
            model.forward_bank_packed(rows, arg[1], per_run=arg[0] == "per-run")
        elif isinstance(arg, tuple):
            model.forward_bank(rows, arg[1])
        else:
            model.forward_rows(rows, arg)

    samples: dict[str, list[float]] = {c: [] for c in cases}
    for _ in range(3):  # warm-up
        for arg in cases.values():
            call(arg)
    for _ in range(reps):
        for case, arg in cases.items():
            t0 = time.perf_counter()
            call(arg)
            samples[case].append(time.perf_counter() - t0)
    out = []
    for case, vals in samples.items():
        ms = percentile(vals, 50) * 1000
        out.append((case, ms, ms / (1 if "1 row" in case else PROFILE_ROWS)))
    return out


def thread_check(
    model: NaiveBaseline, texts: list[str], reps: int, restore: int
) -> list[tuple[int, float, float]]:
    """Median ms of a 1-row and a PROFILE_ROWS-row forward with 1 and with 2 torch threads,
    interleaved: how much the thread count matters on this (shared) box right now."""
    import torch

    rows = texts[:PROFILE_ROWS]
    samples: dict[int, tuple[list[float], list[float]]] = {1: ([], []), 2: ([], [])}
    try:
        for rep in range(reps + 2):
            for threads, (one, many) in samples.items():
                torch.set_num_threads(threads)
                t0 = time.perf_counter()
                model.forward_rows(rows[:1], None)
                t1 = time.perf_counter()
                model.forward_rows(rows, None)
                t2 = time.perf_counter()
                if rep >= 2:  # two warm-up rounds
                    one.append(t1 - t0)
                    many.append(t2 - t1)
    finally:
        torch.set_num_threads(restore)
    return [
        (th, percentile(one, 50) * 1000, percentile(many, 50) * 1000) for th, (one, many) in samples.items()
    ]


# --------------------------------------------------------------------------- helpers
def wait_quiet(threshold: float, max_minutes: float) -> tuple[bool, float]:
    """Poll the 1-minute load average every 30 s until it is below `threshold`."""
    t0 = time.monotonic()
    while True:
        load1 = os.getloadavg()[0]
        if load1 < threshold:
            return True, time.monotonic() - t0
        if time.monotonic() - t0 >= max_minutes * 60:
            return False, time.monotonic() - t0
        log(
            f"load average {load1:.2f} >= {threshold}; waiting ({(time.monotonic() - t0) / 60:.1f} min so far)"
        )
        time.sleep(30)


def fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def div(a: float, b: float) -> float:
    return a / b if b else float("nan")


def yes(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def first_load_bands(n: int) -> list[tuple[int, int]]:
    """Index ranges of the first loads (adapter i loads with i others resident) to compare:
    the first 8 and the last 8."""
    return [(0, 8), (n - 8, n)] if n >= 24 else []


def load_compare(path: Path) -> dict[str, object]:
    """The headline numbers of another saved run, for a side-by-side line in the report."""
    saved = json.loads(Path(path).read_text())
    r, a = saved["results"], saved["args"]
    tput = {int(k): v for k, v in r["tput"].items()}
    return {
        "argv": r["meta"]["argv"],
        "date": r["meta"]["date"],
        "threads": (
            f"{a['threads']}" if a.get("threads") else f"torch's default ({r.get('inproc_threads', '?')})"
        ),
        "load_before": r["meta"]["load_before"],
        "load_after": r["meta"]["load_after"],
        "baseline": r["baseline"]["rps"],
        "baseline_p50": r["baseline"]["p50"],
        "tput": {k: (v["rps"], v["p50"], v["rows_per_batch"], v["forward_ms"]) for k, v in tput.items()},
        "bf16": r["bf16_tput"]["rps"] if r.get("bf16_tput") else None,
        "bf16_by_k": {int(k): (v["rps"], v["p50"]) for k, v in r.get("bf16_by_k", {}).items()},
        "profile_one_row": next(
            (ms for case, ms, _ in r["profile"] if case.startswith("1 row")), float("nan")
        ),
    }


def compare_text(c: dict[str, object]) -> str:
    shown, skip = [], False
    for a in c["argv"]:
        if skip or a.startswith(("--save-json", "--compare-json")):
            skip = a in ("--save-json", "--compare-json")
            continue
        shown.append(a)
    cmd = " ".join([".venv/bin/python bench/serving.py", *shown])
    tput = c["tput"]
    k1 = tput.get(1)
    lines = [
        f"**{c.get('label') or 'The same benchmark with other torch threads'}** (`{cmd}`, {c['date']}, torch threads: "
        f"{c['threads']} on both sides, 1-minute load "
        f"{c['load_before']:.2f} at the start, {c['load_after']:.2f} at the end):",
        "",
        "| run | throughput (req/s) | p50 (ms) | vs. naive baseline | vs. K=1 | rows per batch | forward per batch (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| naive baseline (8 adapters) | {c['baseline']:.1f} | {c['baseline_p50']:.1f} | 1.00x | | 1 | |",
    ]
    for k, (rps, p50, rows, fwd) in tput.items():
        lines.append(
            f"| service, K={k} | {rps:.1f} | {p50:.1f} | {div(rps, c['baseline']):.2f}x "
            f"| {div(rps, k1[0]) if k1 else float('nan'):.2f} | {rows:.1f} | {fwd:.1f} |"
        )
    bf16_by_k = c.get("bf16_by_k") or {}
    for k, (rps, p50) in bf16_by_k.items():
        b1 = bf16_by_k.get(1)
        lines.append(
            f"| service, K={k}, bfloat16 | {rps:.1f} | {p50:.1f} | {div(rps, c['baseline']):.2f}x "
            f"| {div(rps, b1[0]) if b1 else float('nan'):.2f} | | |"
        )
    if c["bf16"] is not None and not bf16_by_k:
        lines.append(
            f"| service, K=8, bfloat16 | {c['bf16']:.1f} | | {div(c['bf16'], c['baseline']):.2f}x | | | |"
        )
    return "\n".join(lines)


def cpu_has_bf16() -> bool:
    """Native bfloat16 matmul instructions (AVX512-BF16 or AMX-BF16) on this CPU (the trainer's probe)."""
    from tuneserve_server.training.precision import cpu_has_native_bf16

    return cpu_has_native_bf16()


def interpretation(args, res) -> str:
    """The reading of the numbers, written from the numbers."""
    tput, base = res["tput"], res["baseline"]
    k1, k8, k64 = tput.get(1), tput.get(8), tput.get(64)
    prof = {case: ms for case, ms, _ in res["profile"]}
    r = PROFILE_ROWS
    p_set = prof[f"{r} rows, 1 adapter, set_adapter (no adapter_names)"]
    p_n1 = prof[f"{r} rows, 1 adapter via adapter_names"]
    p_n8 = prof[f"{r} rows, 8 adapters via adapter_names"]
    p_n16 = prof[f"{r} rows, {r} adapters via adapter_names"]
    p_one = prof["1 row, 1 adapter, set_adapter"]
    out = []
    if k8:
        speed = div(k8["rps"], base["rps"])
        need = 4 * base["rps"]
        out.append(
            f"- **Service vs. the naive loop: {speed:.2f}x.** The loop pays a whole forward per request "
            f"({div(1000, base['rps']):.1f} ms per request; a 1-row forward alone is {p_one:.1f} ms in the "
            f"profile). The service ran {k8['rows_per_batch']:.1f} rows per forward at K=8 "
            f"({k8['forward_ms']:.1f} ms per batch, {div(k8['forward_ms'], k8['rows_per_batch']):.2f} ms per row), "
            f"its torch thread busy {k8['forward_busy'] * 100:.0f}% of the window. "
            + (
                f"4x would be {need:.0f} req/s, i.e. at most {div(1000, need):.2f} ms of forward per row even with "
                f"the torch thread busy all the time; at {div(k8['forward_ms'], k8['rows_per_batch']):.2f} ms per row "
                f"the forward pass itself is what stops it, and with {args.clients} clients that each wait for their "
                f"answer no batch can exceed {args.clients} rows."
                if speed < 4
                else "The goal is met."
            )
        )
        if k8["rows_per_batch"] < 0.75 * args.clients:
            per_k = ", ".join(f"K={k} {t['rows_per_batch']:.1f}" for k, t in tput.items())
            out.append(
                f"- **Batches are not full:** {args.clients} clients, but {k8['rows_per_batch']:.1f} rows per "
                f"batch at K=8 ({per_k}). "
                f"The clients a batch answers send their next call while the following batch is already "
                f"running, so closed-loop clients tend to settle into two cohorts that alternate; the batcher "
                f"waits for the answered cohort up to `batch_regroup_fraction` of a forward, and this run's "
                f"cohorts were not all back by then. Every batch pays the fixed per-forward cost (a 1-row "
                f"forward is {p_one:.1f} ms, a {r}-row one {p_set:.1f} ms in the profile)."
            )
    if k1 and (k8 or k64):
        mix = ", ".join(
            f"K={k} {div(t['rps'], k1['rps']):.2f} ({t['adapters_per_batch']:.1f} distinct adapters per batch)"
            for k, t in tput.items()
            if k != 1
        )
        b1 = prof.get(f"{r} rows, 1 adapter, gathered bank (the server)", float("nan"))
        b8 = prof.get(f"{r} rows, 8 adapters, gathered bank (the server)", float("nan"))
        b16 = prof.get(f"{r} rows, {r} adapters, gathered bank (the server)", float("nan"))
        out.append(
            f"- **Mixing cost** (throughput vs. K=1): {mix}. The server applies LoRA with the gathered bank "
            f"(engine/lora_batched.py): over packed tokens (the default now) one product pair per adapter's "
            f"run of tokens in each layer while a batch mixes at most LOOP_MAX_ADAPTERS adapters (float32 8, "
            f"bfloat16 2), above that each adapter's tokens padded to one group and two batched products per "
            f"layer (the runner groups a batch's rows by adapter); in the padded forward "
            f"one gather of each row's stacked A/B and two batched products. In-process, one {r}-row padded "
            f"forward through the bank takes {b1:.1f} ms with 1 adapter, "
            f"{b8:.1f} ms with 8 and {b16:.1f} ms with {r} ({div(b8, b1):.2f}x and {div(b16, b1):.2f}x). peft's "
            f"`adapter_names=` path (what the server used before) loops over the distinct adapters in every "
            f"layer: {p_n1:.1f} ms with 1, {p_n8:.1f} ms with 8, {p_n16:.1f} ms with {r} "
            f"({div(p_n8, p_n1):.2f}x and {div(p_n16, p_n1):.2f}x); one adapter made active with `set_adapter`: "
            f"{p_set:.1f} ms."
        )
        pk8 = prof.get(f"{r} rows, 8 adapters, gathered bank, packed (the server now)", float("nan"))
        pk1 = prof.get(f"{r} rows, 1 adapter, gathered bank, packed (the server now)", float("nan"))
        pk16 = prof.get(f"{r} rows, {r} adapters, gathered bank, packed (the server now)", float("nan"))
        run16 = prof.get(
            f"{r} rows, {r} adapters, packed, one LoRA product pair per adapter run (main before)",
            float("nan"),
        )
        out.append(
            f"- **Many adapters in one packed batch:** in-process, the {r}-row packed forward takes {pk1:.1f} ms "
            f"with 1 adapter and {pk16:.1f} ms with {r} ({div(pk1, pk16):.2f} of the 1-adapter speed) through "
            f"the batched products; with one product pair per adapter run, as main did, {run16:.1f} ms "
            f"({div(pk1, run16):.2f}). What the batched path still pays with {r} adapters is mostly memory: "
            f"each distinct adapter's factors are read (and gathered) once per layer, {r}x the bytes of one."
        )
        hw = res.get("hw") or {}
        out.append(
            f"- **Padding:** the server now runs each batch's real tokens only (engine/packed.py): the same "
            f"{r}-row, 8-adapter forward takes {pk8:.1f} ms packed vs {b8:.1f} ms padded in-process "
            f"(x{div(b8, pk8):.2f}). Tokenising those {r} rows takes {hw.get('tokenize_ms', float('nan')):.2f} ms "
            f"({div(hw.get('tokenize_ms', float('nan')), pk8) * 100:.1f}% of the packed forward), which is why "
            f"tokenisation stays on the torch thread (see the thread plan)."
        )
    if k8:
        out.append(
            f"- **Client side:** during the K=8 window the server process used {k8['server_cpu']:.2f} cores "
            f"and the {args.clients} client threads (gRPC, protobuf, Python) {k8['client_cpu']:.2f} cores of the "
            f"{res['meta']['cpus']}; the server's own time per Predict was {k8['rpc_ms']:.1f} ms of the client's "
            f"{k8['p50']:.1f} ms p50, and requests waited {k8['queue_ms']:.1f} ms on average in the batcher's queue"
            + (
                " (about one forward: behind the batch in progress)."
                if k8["queue_ms"] > 0.5 * k8["forward_ms"]
                else "."
            )
        )
    bf = res.get("bf16_tput")
    if bf and k8:
        ratio = div(bf["rps"], k8["rps"])
        hw = res["meta"].get("bf16_hw")
        pass_ratio = div(res["acc32_s"], res["acc16_s"])
        out.append(
            f"- **bfloat16:** x{ratio:.2f} the float32 throughput at K=8 (16 clients, small batches) and "
            f"x{pass_ratio:.2f} on the accuracy pass ({PREDICT_BATCH}-row calls: {res['acc16_s']:.0f} s vs "
            f"{res['acc32_s']:.0f} s); accuracy {(res['acc16'] - res['acc32']) * 100:+.2f} points. "
            + (
                "This CPU has no native bfloat16 matmul instructions (no AVX512-BF16 or AMX-BF16 in "
                "/proc/cpuinfo), so here bfloat16 halves the weight bytes but does not buy speed; it is meant for "
                "GPUs and CPUs with bfloat16 units."
                if not hw
                else "This CPU has bfloat16 matmul instructions."
            )
        )
    mem = res["memory"]
    if len(mem) > 1:
        last = mem[-1]
        per = (last["rss"] - mem[0]["rss"]) / last["resident"]
        out.append(
            f"- **Memory:** each resident adapter adds about {per / MB:.2f} MiB of RSS against its own "
            f"{res['adapter_size'] / MB:.2f} MiB of weights; the {res['base_bytes'] / MB:.0f} MiB base is held "
            f"once. At {last['resident']} adapters they take {(last['rss'] - mem[0]['rss']) / MB:.0f} MiB "
            f"together (each is {div(res['adapter_size'], res['base_bytes']) * 100:.1f}% of the base: LoRA r=16 on all "
            f"of MiniLM's attention and feed-forward layers, plus the head)."
        )
    tc = {th: (a, b) for th, a, b in res.get("thread_check", [])}
    if 1 in tc and 2 in tc:
        slower = div(tc[2][0], tc[1][0])
        used = args.threads or res.get("inproc_threads", 0)
        out.append(
            f"- **Torch threads** (this run: {used}): during the profile a 1-row forward took {tc[1][0]:.1f} ms "
            f"with 1 thread and {tc[2][0]:.1f} ms with 2 ({PROFILE_ROWS} rows: {tc[1][1]:.1f} vs {tc[2][1]:.1f} ms). "
            + (
                f"With 2 threads on this shared 2-vCPU machine, anything else running (other jobs, the "
                f"server's own gRPC/asyncio thread) stalls torch's thread team: {slower:.1f}x slower, which "
                f"swamps everything else measured here."
                if slower > 1.5
                else "Two threads did not hurt at the time of the profile."
            )
        )
    first = res["first_loads"]
    bands = first_load_bands(len(first))
    if bands:
        (lo0, hi0), (lo1, hi1) = bands
        cold = [c[0] for c in res["cold"]]
        out.append(
            f"- **Cold loads** take {percentile(cold, 50) * 1000:.0f} ms p50 with {len(first) - 1} other adapters "
            f"resident; the first loads after start took {percentile(first[lo0:hi0], 50) * 1000:.0f} ms p50 with "
            f"{lo0}-{hi0 - 1} others resident and {percentile(first[lo1:hi1], 50) * 1000:.0f} ms with "
            f"{lo1}-{hi1 - 1}: the load time grows with the number of adapters already in the model."
            if percentile(first[lo1:hi1], 50) > 1.3 * percentile(first[lo0:hi0], 50)
            else f"- **Cold loads** take {percentile(cold, 50) * 1000:.0f} ms p50; the first loads after start took "
            f"{percentile(first[lo0:hi0], 50) * 1000:.0f} ms p50 with {lo0}-{hi0 - 1} others resident and "
            f"{percentile(first[lo1:hi1], 50) * 1000:.0f} ms with {lo1}-{hi1 - 1}."
        )
    return "\n".join(out)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16, help="concurrent gRPC client threads")
    ap.add_argument("--k", default="1,8,64", help="adapter counts to spread requests over")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a short check of the whole run: --seconds 6 --warmup 2 --cold-n 8 --per-label 3 "
        "--epochs 1 --test-rows 616 --profile-reps 4 --no-wait (numbers are rough)",
    )
    ap.add_argument("--seconds", type=float, default=20.0, help="timed window per measurement")
    ap.add_argument("--warmup", type=float, default=3.0, help="untimed seconds before each window")
    ap.add_argument("--adapters", type=int, default=64, help="adapters to publish (bench-a00..)")
    ap.add_argument("--max-resident", type=int, default=64, help="server --max-resident-adapters")
    ap.add_argument("--memory-points", default="1,8,32,64", help="resident adapter counts to read RSS at")
    ap.add_argument("--cold-n", type=int, default=16, help="adapters to unload and load again (cold loads)")
    ap.add_argument("--per-label", type=int, default=10, help="Banking77 training examples per label")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs for bench-a00")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument(
        "--noise",
        type=float,
        default=0.05,
        help="std of the noise added to the copies' LoRA B, relative to each matrix's std",
    )
    ap.add_argument("--profile-reps", type=int, default=10, help="timed forwards per case in the profile")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads for the server (--torch-threads) and the in-process side "
        "(0: torch's default on both)",
    )
    ap.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 server")
    ap.add_argument(
        "--device",
        default="cpu",
        help="torch device of the servers (--device) and the in-process baseline/profile/matmul rate: cpu, cuda, "
        "cuda:1 (the setup training stays on the CPU)",
    )
    ap.add_argument(
        "--paths",
        default="packed,padded",
        help="forward paths to measure: packed (the default now) and padded (--classify-packed false, "
        "main's path before issue #18) on fresh servers in the same run; 'packed' alone skips the baseline path",
    )
    ap.add_argument(
        "--test-rows",
        type=int,
        default=0,
        help="Banking77 test rows for the accuracy passes (0: all 3,080; fewer only for quick checks)",
    )
    ap.add_argument("--quiet-load", type=float, default=2.5, help="1-minute load average to wait for")
    ap.add_argument("--max-wait-min", type=float, default=25.0, help="longest wait for a quiet machine")
    ap.add_argument("--no-wait", action="store_true", help="start at once, whatever the load")
    ap.add_argument("--docs", type=Path, default=DOCS, help="markdown file whose section to rewrite")
    ap.add_argument("--no-docs", action="store_true", help="print the tables only")
    ap.add_argument("--save-json", type=Path, default=None, help="also write the raw results to this file")
    ap.add_argument(
        "--compare-json",
        type=Path,
        default=None,
        help="a --save-json file of another run (e.g. other --threads) to summarise next to this one",
    )
    ap.add_argument(
        "--compare-label",
        default="",
        help="the heading of that summary (default: 'The same benchmark with other torch threads')",
    )
    ap.add_argument(
        "--render-json",
        type=Path,
        default=None,
        help="measure nothing: print (and write to --docs) the report of a --save-json file",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.cold_n, args.per_label, args.epochs = 6.0, 2.0, 8, 3, 1
        args.test_rows, args.profile_reps, args.no_wait = 616, 4, True
    if args.render_json:
        saved = json.loads(args.render_json.read_text())
        res = saved["results"]
        res["tput"] = {int(k): v for k, v in res["tput"].items()}
        res["bf16_by_k"] = {int(k): v for k, v in res.get("bf16_by_k", {}).items()}
        for key in ("padded_tput", "bf16_padded"):
            if key in res:
                res[key] = {int(k): v for k, v in res[key].items()}
        run_args = argparse.Namespace(**{**vars(ap.parse_args([])), **saved["args"]})
        if args.compare_json:
            res["compare"] = load_compare(args.compare_json) | {"label": args.compare_label}
        body, summary = report(run_args, res)
        print(summary)
        if not args.no_docs:
            write_docs(args.docs, SECTION, body)
            log(f"wrote section to {args.docs}")
        return 0
    ks = [int(x) for x in args.k.split(",") if x]
    paths = {x for x in args.paths.split(",") if x}
    if not paths <= {"packed", "padded"} or "packed" not in paths:
        ap.error("--paths: packed, optionally with padded (packed,padded)")
    points = [int(x) for x in args.memory_points.split(",") if x]
    needed = max([*ks, *points, args.cold_n, BASELINE_ADAPTERS, PROFILE_ROWS])
    if args.adapters < needed:
        ap.error(f"--adapters must be at least {needed} for these settings")
    if args.max_resident < max([*ks, *points]):
        ap.error("--max-resident must hold the largest K and memory point")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.no_wait:
        quiet, waited = os.getloadavg()[0] < args.quiet_load, 0.0
    else:
        quiet, waited = wait_quiet(args.quiet_load, args.max_wait_min)
    log(
        f"load average {os.getloadavg()[0]:.2f} ({'quiet' if quiet else 'NOT quiet'}; waited {waited / 60:.1f} min)"
    )

    import torch

    from tuneserve_client import Client

    if args.threads:  # the bench process too (training, baseline, profile)
        torch.set_num_threads(args.threads)

    started = time.monotonic()
    load_before = os.getloadavg()
    test_rows = read_csv("test")
    texts = [t for t, _ in test_rows]  # the request texts: always the whole test set
    if args.test_rows:
        test_rows = test_rows[: args.test_rows]
    tmp = Path(tempfile.mkdtemp(prefix="tuneserve-bench-serving-"))
    data_dir = tmp / "data"
    data_dir.mkdir()
    server: ApiServer | None = None
    res: dict[str, object] = {"tput": {}, "loads": []}

    def phase(name: str) -> None:
        res["loads"].append((name, os.getloadavg()[0]))

    try:
        phase("setup (training)")
        setup = build_adapters(
            data_dir, tmp, args.adapters, args.per_label, args.epochs, args.seed, args.noise
        )
        res["setup"] = setup
        res["setup_s"] = time.monotonic() - started

        # ---- float32 server -----------------------------------------------------------
        phase("float32 server")
        t_srv = time.monotonic()
        server = ApiServer(
            data_dir,
            dtype="float32",
            max_resident=args.max_resident,
            threads=args.threads,
            device=args.device,
        )
        server.wait_serving()
        res["start_s"] = time.monotonic() - t_srv
        log(f"float32 server SERVING after {res['start_s']:.1f}s")
        with Client(server.target, timeout=120) as client:
            mem_rows, first_loads = memory_curve(server, client, points)
            res["memory"] = mem_rows
            res["first_loads"] = first_loads
            res["adapter_size"] = client.load_adapter(adapter_name(0)).size_bytes  # in serving dtype
            log("memory: " + ", ".join(f"{r['resident']}: {r['rss'] / MB:.0f} MiB" for r in mem_rows))

            for k in ks:
                refs = [adapter_name(i) for i in range(k)]
                for ref in refs:
                    client.load_adapter(ref)
                phase(f"K={k}")
                r = drive(server.target, refs, texts, args.clients, args.warmup, args.seconds, server)
                res["tput"][k] = r
                log(
                    f"K={k}: {r['rps']:.1f} req/s, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
                    f"{r['rows_per_batch']:.1f} rows/batch, forward {r['forward_ms']:.1f} ms, errors {r['errors']}"
                )

            phase("cold loads")
            cold = []
            for i in range(args.cold_n):
                client.unload_adapter(adapter_name(i))
                t0 = time.perf_counter()
                loaded = client.load_adapter(adapter_name(i))
                cold.append((loaded.load_seconds, time.perf_counter() - t0))
            res["cold"] = cold
            log(f"cold loads p50 {percentile([c[0] for c in cold], 50) * 1000:.0f} ms")

            res["rss_after_traffic"] = server.metrics().get(
                "tuneserve_process_resident_memory_bytes", float("nan")
            )
            for i in range(args.adapters):
                client.unload_adapter(adapter_name(i))
            time.sleep(0.3)
            m = server.metrics()
            res["rss_after_unload_all"] = m.get("tuneserve_process_resident_memory_bytes", float("nan"))

            res["test_rows"] = len(test_rows)
            phase("float32 accuracy")
            acc32, pred32, acc32_s = accuracy(client, adapter_name(0), test_rows)
            res["acc32"], res["acc32_s"] = acc32, acc32_s
            log(f"float32 accuracy of {adapter_name(0)}: {acc32:.4f} ({acc32_s:.0f}s)")
        server.stop()
        server = None
        if "padded" in paths:
            res["padded_tput"] = padded_server_run(data_dir, args, "float32", ks, texts, phase)

        # ---- naive baseline, in this process, server stopped ----------------------------
        gc.collect()
        phase("naive baseline")
        if args.threads:
            torch.set_num_threads(args.threads)
        res["inproc_threads"] = torch.get_num_threads()
        dirs = {adapter_name(i): adapter_dir(data_dir, i) for i in range(BASELINE_ADAPTERS)}
        naive = NaiveBaseline(dirs, args.device)
        res["base_bytes"] = naive.base_bytes
        res["baseline"] = run_baseline(naive, list(dirs), texts, args.warmup, args.seconds)
        log(f"naive baseline: {res['baseline']['rps']:.1f} req/s")
        phase("matmul rate")
        res["hw"] = hardware_figures(texts, setup, args.profile_reps, args.device)
        log(
            f"matmul: float32 {res['hw']['f32_rate'] / 1e9:.0f} GFLOP/s, bfloat16 {res['hw']['bf16_rate'] / 1e9:.0f} "
            f"GFLOP/s; {res['hw']['flops_per_token'] / 1e6:.1f} MFLOP per real token, "
            f"{res['hw']['mean_tokens']:.1f} tokens per query"
        )
        for i in range(BASELINE_ADAPTERS, PROFILE_ROWS):
            naive.add(adapter_name(i), adapter_dir(data_dir, i))
        naive.build_bank({adapter_name(i): adapter_dir(data_dir, i) for i in range(PROFILE_ROWS)})
        phase("profile")
        res["profile"] = profile_mixing(naive, texts, args.profile_reps)
        res["thread_check"] = thread_check(naive, texts, args.profile_reps, res["inproc_threads"])
        del naive
        gc.collect()

        # ---- bfloat16 server -----------------------------------------------------------
        if not args.no_bf16:
            phase("bfloat16 server")
            server = ApiServer(
                data_dir,
                dtype="bfloat16",
                max_resident=args.max_resident,
                threads=args.threads,
                device=args.device,
            )
            server.wait_serving()
            with Client(server.target, timeout=300) as client:
                refs = [adapter_name(i) for i in range(8)]
                for ref in refs:
                    client.load_adapter(ref)
                res["bf16_adapter_size"] = client.load_adapter(adapter_name(0)).size_bytes
                res["bf16_rss8"] = server.metrics().get(
                    "tuneserve_process_resident_memory_bytes", float("nan")
                )
                res["bf16_by_k"] = {}
                for k in ks:
                    refs = [adapter_name(i) for i in range(k)]
                    for ref in refs:
                        client.load_adapter(ref)
                    phase(f"bf16 K={k}")
                    r = drive(server.target, refs, texts, args.clients, args.warmup, args.seconds, server)
                    res["bf16_by_k"][k] = r
                    log(
                        f"bf16 K={k}: {r['rps']:.1f} req/s, p50 {r['p50']:.1f} ms, "
                        f"{r['rows_per_batch']:.1f} rows/batch, forward {r['forward_ms']:.1f} ms, errors {r['errors']}"
                    )
                res["bf16_tput"] = res["bf16_by_k"].get(8) or next(iter(res["bf16_by_k"].values()))
                acc16, pred16, acc16_s = accuracy(client, adapter_name(0), test_rows)
                res["acc16"], res["acc16_s"] = acc16, acc16_s
                res["agree"] = sum(a == b for a, b in zip(pred32, pred16, strict=True))
                log(f"bfloat16 accuracy: {acc16:.4f} ({acc16_s:.0f}s)")
            server.stop()
            server = None
            if "padded" in paths:
                bf_ks = [k for k in ks if k == 8] or ks[:1]
                res["bf16_padded"] = padded_server_run(data_dir, args, "bfloat16", bf_ks, texts, phase)
    except BaseException:
        if server is not None:
            server.stop()
            tail = server.log_tail()
            if tail:
                print(f"--- server log (tail) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    phase("end")
    res["meta"] = {
        "date": dt.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "code": code_version(),
        "argv": sys.argv[1:],
        "load_before": load_before[0],
        "load_after": os.getloadavg()[0],
        "quiet": quiet,
        "waited_s": waited,
        "runtime_s": time.monotonic() - started,
        "bf16_hw": cpu_has_bf16(),
    }
    if args.compare_json:
        res["compare"] = load_compare(args.compare_json) | {"label": args.compare_label}
    if args.save_json:
        saved_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.save_json.write_text(json.dumps({"args": saved_args, "results": res}, indent=1))
        log(f"raw results in {args.save_json}")
    body, summary = report(args, res)
    print()
    print(summary)
    if not args.no_docs:
        write_docs(args.docs, SECTION, body)
        log(f"wrote section to {args.docs}")
    return 0


# --------------------------------------------------------------------------- report
def before_after_table(res) -> str:
    """Padded (main's forward) against packed (this code), same run, fresh servers; and the
    fraction of the measured compute bound each reaches."""
    base = res["baseline"]
    hw = res.get("hw")
    lines = []
    if hw:
        lines.append(
            f"**Compute bound.** This machine's matmul rate, measured in this run (one {hw.get('size', 1024)}x{hw.get('size', 1024)} product, "
            f"{hw['threads']} torch threads, best of ~1 s): float32 **{hw['f32_rate'] / 1e9:.0f} GFLOP/s**, "
            f"bfloat16 **{hw['bf16_rate'] / 1e9:.0f} GFLOP/s**. A Banking77 test query is {hw['mean_tokens']:.1f} "
            f"tokens (MiniLM tokenizer, [CLS]/[SEP] included); a real token costs "
            f"{hw['flops_per_token'] / 1e6:.1f} MFLOP through MiniLM's 6 layers with the bench adapters' LoRA "
            f"(Linears {hw['flops_linear'] / 1e6:.1f}, LoRA products {hw['flops_lora'] / 1e6:.2f}, attention "
            f"{hw['flops_attention'] / 1e6:.2f} MFLOP), so a query is "
            f"{hw['mean_tokens'] * hw['flops_per_token'] / 1e9:.2f} GFLOP and the bound is "
            f"{hw['f32_rate'] / (hw['mean_tokens'] * hw['flops_per_token']):.0f} queries/s in float32, "
            f"{hw['bf16_rate'] / (hw['mean_tokens'] * hw['flops_per_token']):.0f} in bfloat16. The fraction "
            f"below is achieved real-token FLOP/s over that rate (padding counts as waste)."
        )
        lines.append("")
    lines += [
        "| forward path | dtype | K | req/s | vs. naive | p50 (ms) | p99 (ms) | p99/p50 | rows per batch "
        "| forward per row (ms) | fraction of compute bound |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups = [
        ("padded (main)", "float32", res.get("padded_tput") or {}),
        ("packed", "float32", res["tput"]),
        ("padded (main)", "bfloat16", res.get("bf16_padded") or {}),
        ("packed", "bfloat16", res.get("bf16_by_k") or {}),
    ]
    for name, dtype, by_k in groups:
        for k, r in by_k.items():
            lines.append(
                f"| {name} | {dtype} | {k} | {r['rps']:.1f} | {div(r['rps'], base['rps']):.2f}x | {r['p50']:.1f} "
                f"| {r['p99']:.1f} | {div(r['p99'], r['p50']):.2f} | {fmt(r.get('rows_per_batch', float('nan')))} "
                f"| {fmt(div(r.get('forward_ms', float('nan')), r.get('rows_per_batch', float('nan'))), 2)} "
                f"| {fmt(bound_fraction(res, r, dtype), 2)} |"
            )
    ratios = []
    for dtype, before, after in (
        ("float32", res.get("padded_tput") or {}, res["tput"]),
        ("bfloat16", res.get("bf16_padded") or {}, res.get("bf16_by_k") or {}),
    ):
        for k in before:
            if k in after:
                ratios.append(f"{dtype} K={k} **{div(after[k]['rps'], before[k]['rps']):.2f}x**")
    if ratios:
        lines += ["", "Packed over padded throughput, same run: " + ", ".join(ratios) + "."]
    return "\n".join(lines)


def report(args, res):
    meta = res["meta"]
    setup = res["setup"]
    tput = res["tput"]
    base = res["baseline"]
    k1 = tput.get(1)

    t_lines = [
        "| K adapters | throughput (req/s) | p50 (ms) | p99 (ms) | vs. naive baseline | vs. K=1 | calls | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| naive baseline, in-process (8 adapters) | {base['rps']:.1f} | {base['p50']:.1f} | {base['p99']:.1f} "
        f"| 1.00x | | {base['calls']} | 0 |",
    ]
    for k, r in tput.items():
        vs1 = f"{div(r['rps'], k1['rps']):.2f}" if k1 else "n/a"
        t_lines.append(
            f"| service, K={k} | **{r['rps']:.1f}** | {r['p50']:.1f} | {r['p99']:.1f} | {div(r['rps'], base['rps']):.2f}x "
            f"| {vs1} | {r['calls']} | {r['errors']} |"
        )
    bf = res.get("bf16_tput")
    bf_by_k = res.get("bf16_by_k") or ({8: bf} if bf else {})
    bf_k1 = bf_by_k.get(1)
    for k, r in bf_by_k.items():
        vs1 = f"{div(r['rps'], bf_k1['rps']):.2f}" if bf_k1 else "n/a"
        t_lines.append(
            f"| service, K={k}, bfloat16 | **{r['rps']:.1f}** | {r['p50']:.1f} | {r['p99']:.1f} "
            f"| {div(r['rps'], base['rps']):.2f}x | {vs1} | {r['calls']} | {r['errors']} |"
        )
    throughput_table = "\n".join(t_lines)

    s_lines = [
        "| run | batches/s | rows per batch | adapters per batch | forward per batch (ms) | forward per row (ms) "
        "| torch thread busy | queue wait (ms) | server RPC time (ms) | client p50 (ms) | server CPU (cores) "
        "| client CPU (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    runs = [(f"K={k}", r) for k, r in tput.items()] + [(f"K={k} bfloat16", r) for k, r in bf_by_k.items()]
    for name, r in runs:
        s_lines.append(
            f"| {name} | {r['batches'] / args.seconds:.1f} | {fmt(r['rows_per_batch'])} | {fmt(r['adapters_per_batch'])} "
            f"| {fmt(r['forward_ms'])} | {fmt(div(r['forward_ms'], r['rows_per_batch']), 2)} | {r['forward_busy'] * 100:.0f}% "
            f"| {fmt(r['queue_ms'])} | {fmt(r['rpc_ms'])} | {r['p50']:.1f} | {fmt(r['server_cpu'], 2)} "
            f"| {fmt(r['client_cpu'], 2)} |"
        )
    server_table = "\n".join(s_lines)

    p_lines = ["| one encoder forward, in-process | median (ms) | per row (ms) |", "|---|---:|---:|"]
    for case, ms, per_row in res["profile"]:
        p_lines.append(f"| {case} | {ms:.1f} | {per_row:.2f} |")
    for threads, ms1, ms16 in res.get("thread_check", []):
        p_lines.append(
            f"| 1 row / {PROFILE_ROWS} rows, 1 adapter, set_adapter, {threads} torch thread(s) "
            f"| {ms1:.1f} / {ms16:.1f} | {ms1:.2f} / {ms16 / PROFILE_ROWS:.2f} |"
        )
    profile_table = "\n".join(p_lines)

    mem = res["memory"]
    adapter_size = res["adapter_size"]
    m0 = mem[0]
    m_lines = [
        "| adapters resident | process RSS (MiB) | RSS growth over 0 (MiB) | growth per adapter (MiB) "
        "| tuneserve_adapters_resident_bytes (MiB) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in mem:
        grow = r["rss"] - m0["rss"]
        per = grow / r["resident"] / MB if r["resident"] else float("nan")
        m_lines.append(
            f"| {r['resident']} | {r['rss'] / MB:.0f} | {grow / MB:.1f} | {fmt(per, 2)} "
            f"| {r['adapter_bytes'] / MB:.1f} |"
        )
    memory_table = "\n".join(m_lines)
    last = mem[-1]
    per_adapter_rss = (last["rss"] - m0["rss"]) / last["resident"]
    ratio_mem = per_adapter_rss / adapter_size
    base_bytes = res["base_bytes"]
    mem_ok = ratio_mem <= 1.5

    cold_s = [c[0] for c in res["cold"]]
    cold_rpc = [c[1] for c in res["cold"]]
    first = res["first_loads"]
    cold_line = (
        f"| unload, then LoadAdapter ({len(cold_s)} adapters) | {percentile(cold_s, 50) * 1000:.0f} "
        f"| {percentile(cold_s, 95) * 1000:.0f} | {percentile(cold_rpc, 50) * 1000:.0f} |\n"
        f"| first load after start ({len(first)} adapters, memory phase) | {percentile(first, 50) * 1000:.0f} "
        f"| {percentile(first, 95) * 1000:.0f} | |"
    )
    for lo, hi in first_load_bands(len(first)):
        band = first[lo:hi]
        cold_line += (
            f"\n| ... of those, with {lo}-{hi - 1} others already resident | "
            f"{percentile(band, 50) * 1000:.0f} | {percentile(band, 95) * 1000:.0f} | |"
        )
    cold_table = (
        "| cold load (store -> resident) | load_seconds p50 (ms) | p95 (ms) | LoadAdapter RPC p50 (ms) |\n"
        "|---|---:|---:|---:|\n" + cold_line
    )

    k8 = tput.get(8)
    speedup = div(k8["rps"], base["rps"]) if k8 else float("nan")
    mix8 = div(k8["rps"], k1["rps"]) if (k8 and k1) else float("nan")
    k64 = tput.get(64)
    mix64 = div(k64["rps"], k1["rps"]) if (k64 and k1) else float("nan")
    acc32 = res["acc32"]
    acc16 = res.get("acc16")
    bf_speed = div(bf["rps"], k8["rps"]) if (bf and k8) else float("nan")

    goal_lines = [
        "| goal | measured | |",
        "|---|---|---|",
        f"| service >= 4x the naive baseline's throughput, {args.clients} clients over 8 adapters, through gRPC "
        f"| {fmt(speedup, 2)}x ({fmt(k8['rps'] if k8 else float('nan'))} vs {base['rps']:.1f} req/s) | {yes(speedup >= 4)} |",
        f"| mixing cost: K=8 / K=1 >= 0.9 | {fmt(mix8, 2)} | {yes(mix8 >= 0.9)} |",
        f"| mixing cost: K=64 / K=1 >= 0.95 | {fmt(mix64, 2)} | {yes(mix64 >= 0.95)} |",
    ]
    if k8:
        tail = div(k8["p99"], k8["p50"])
        goal_lines.append(f"| p99 <= 2.5x p50 (float32, K=8) | {fmt(tail, 2)}x | {yes(tail <= 2.5)} |")
    hw = res.get("hw")
    if hw and k8:
        frac = bound_fraction(res, k8, "float32")
        goal_lines.append(
            f"| fraction of the compute bound >= 0.5 (float32, K=8: real tokens x FLOPs per token / "
            f"measured matmul rate) | {fmt(frac, 2)} | {yes(frac >= 0.5)} |"
        )
        if 8 in (res.get("bf16_by_k") or {}):
            frac16 = bound_fraction(res, res["bf16_by_k"][8], "bfloat16")
            goal_lines.append(
                f"| the same in bfloat16 (against the bfloat16 matmul rate) | {fmt(frac16, 2)} | {yes(frac16 >= 0.5)} |"
            )
    if bf_k1:
        for k in (8, 64):
            if k in bf_by_k:
                ratio = div(bf_by_k[k]["rps"], bf_k1["rps"])
                goal_lines.append(
                    f"| mixing cost in bfloat16: K={k} / K=1 >= 0.9 | {fmt(ratio, 2)} | {yes(ratio >= 0.9)} |"
                )
    if 8 in bf_by_k:
        bf_speedup = div(bf_by_k[8]["rps"], base["rps"])
        goal_lines.append(
            f"| >= 6x with the server in bfloat16 (the naive loop stays float32) | "
            f"{fmt(bf_speedup, 2)}x ({bf_by_k[8]['rps']:.1f} vs {base['rps']:.1f} req/s) | {yes(bf_speedup >= 6)} |"
        )
    if acc16 is not None:
        goal_lines.append(
            f"| bfloat16 mode: accuracy difference and speed-up reported | accuracy {acc16 * 100:.2f}% vs "
            f"{acc32 * 100:.2f}% float32 ({(acc16 - acc32) * 100:+.2f} points); throughput x{bf_speed:.2f} of float32 "
            f"at K=8 | reported ({'slower' if bf_speed < 1 else 'faster'} here) |"
        )
    goal_lines += [
        f"| cold adapter load p50/p95 reported | {percentile(cold_s, 50) * 1000:.0f} / "
        f"{percentile(cold_s, 95) * 1000:.0f} ms | reported |",
        f"| memory: base + about the adapters' own bytes (no base copy per adapter); read as RSS growth "
        f"per adapter <= 1.5x its own bytes | {per_adapter_rss / MB:.2f} MiB per adapter vs "
        f"{adapter_size / MB:.2f} MiB own bytes ({ratio_mem:.2f}x; base weights {base_bytes / MB:.0f} MiB) "
        f"| {yes(mem_ok)} |",
    ]
    goals_table = "\n".join(goal_lines)
    before_after = before_after_table(res)

    bf16_text = ""
    if acc16 is not None:
        bf16_text = (
            f"\n**bfloat16 serving** (`--serving-dtype bfloat16`, a fresh server): Banking77 test accuracy of "
            f"`{adapter_name(0)}` {acc16 * 100:.2f}% vs {acc32 * 100:.2f}% in float32 "
            f"({(acc16 - acc32) * 100:+.2f} points; {res['agree']}/{res['test_rows']} predictions identical); "
            f"K=8 throughput {bf['rps']:.1f} vs {k8['rps'] if k8 else float('nan'):.1f} req/s = x{bf_speed:.2f} "
            f"(p50 {bf['p50']:.1f} vs {k8['p50'] if k8 else float('nan'):.1f} ms). Resident adapter size "
            f"{res['bf16_adapter_size'] / MB:.2f} MiB (float32: {adapter_size / MB:.2f} MiB); process RSS with 8 "
            f"adapters {res['bf16_rss8'] / MB:.0f} MiB. Time for the {res['test_rows']}-query accuracy pass: "
            f"{res['acc16_s']:.0f} s in bfloat16, {res['acc32_s']:.0f} s in float32.\n"
        )

    reading = interpretation(args, res)
    summary = "\n\n".join(
        [
            throughput_table,
            before_after,
            goals_table,
            reading,
            server_table,
            profile_table,
            memory_table,
            cold_table,
        ]
    )
    summary += "\n" + bf16_text
    if res.get("compare"):
        summary += "\n" + compare_text(res["compare"]) + "\n"

    shown, skip = [], False
    for a in meta["argv"]:  # the measuring command, without where its raw results went
        if skip or a.startswith(("--save-json", "--compare-json")):
            skip = a in ("--save-json", "--compare-json")
            continue
        shown.append(a)
    cmd = " ".join([".venv/bin/python bench/serving.py", *shown])
    waited = meta["waited_s"]
    quiet_text = (
        f"it waited {waited / 60:.1f} min for the 1-minute load average to drop below {args.quiet_load:g}"
        if meta["quiet"]
        else f"the 1-minute load average never dropped below {args.quiet_load:g} within {args.max_wait_min:g} min "
        f"of polling, so it ran anyway: the absolute numbers carry that background load"
    )
    if args.no_wait:
        quiet_text = "started at once (--no-wait)"
    threads_text = (
        f"{args.threads} (server `--torch-threads {args.threads}`, in-process `torch.set_num_threads`)"
        if args.threads
        else f"torch's default on both sides ({res.get('inproc_threads', '?')} in-process; the server leaves "
        f"`torch_threads` at 0, the same default)"
    )
    compare_block = compare_text(res["compare"]) + "\n\n" if res.get("compare") else ""
    loads_text = ", ".join(f"{name} {load:.1f}" for name, load in res.get("loads", []))
    body = f"""\
Measured {meta["date"]} on a {meta["cpus"]}-core CPU machine ({meta["cpu_model"]}),
Python {meta["python"]}, torch {meta["torch"]}. Code: {meta["code"]}. One run of
`{cmd}` ({meta["runtime_s"] / 60:.1f} min). The box is shared with other jobs: {quiet_text}; 1-minute load
average {meta["load_before"]:.2f} at the start and {meta["load_after"]:.2f} at the end (the benchmark's own
server and client threads count in the second figure). 1-minute load average as each phase began:
{loads_text}. Read the numbers as "about this much".

- **Adapters:** one LoRA adapter trained in the bench process with the service's recipe
  (`ClassificationRecipe`, r=16 on query/key/value/dense, defaults otherwise) on
  {setup["train_examples"]} Banking77 training queries ({args.per_label} per label, all {setup["labels"]} labels,
  {setup["validation_examples"]} held out), {args.epochs} epoch(s) = {setup["steps"]} steps,
  {setup["train_seconds"]:.0f} s; validation accuracy {setup["validation_accuracy"] * 100:.1f}%, Banking77 test
  accuracy {acc32 * 100:.2f}% (chance: 1.3%). It is `{adapter_name(0)}`; `{adapter_name(1)}`..`{adapter_name(args.adapters - 1)}`
  are copies with Gaussian noise ({args.noise:g} x each matrix's std) added to the LoRA B matrices.
  Each of the {args.adapters} is a job and a version in the real stores (`SqliteStore`,
  `LocalAdapterStore` with its checksum manifest), registered with `complete_job` as a worker
  does; {setup["adapter_file_bytes"] / MB:.2f} MiB of files each.
- **Server:** `tuneserve api` on localhost, `--max-resident-adapters {args.max_resident}`, default batching
  (`max_batch_rows` 64, `max_batch_wait_ms` 2, `batch_regroup_fraction` 0.5), LoRA through the gathered
  bank (engine/lora_batched.py), cold loads on `max_concurrent_loads` 2 loader threads; float32 unless
  stated ("bfloat16": the same with `--serving-dtype bfloat16`, a fresh server). Torch intra-op threads:
  {threads_text}.
- **Load:** {args.clients} client threads in the bench process, one `tuneserve_client.Client`
  (own channel) each, 1-text `Predict` calls back to back; call n = t + {args.clients}*j
  (thread t, its j-th call) names adapter n % K and Banking77 test query n. All K adapters
  made resident first (LoadAdapter). {args.warmup:g} s untimed, then {args.seconds:g} s timed:
  throughput = calls completed in the window / {args.seconds:g} s; latency = the client's
  wall time per call. The clients share the 2 cores with the server.
- **Naive baseline:** in the bench process with the server stopped: `AutoModel` +
  `PeftModel.from_pretrained` / `load_adapter` for the first 8 adapters, then one request at
  a time: `set_adapter(name)`, tokenize, forward, mean pool, that adapter's head, softmax;
  the same request sequence (adapter n % 8, query n), the same warm-up and window.
- **Reference** (measured in-process on this machine earlier, quoted from the issue, not
  re-measured): {"; ".join(f"{a}: {b}" for a, b in REFERENCES)}.

{throughput_table}

{before_after}

{goals_table}

{reading}

**Where the time goes** (the server's own metrics, diffed over each timed window):

{server_table}

The same peft forward in-process (median of {args.profile_reps}, interleaved), to separate
the cost of `adapter_names` mixing from the gRPC/batcher path:

{profile_table}

{compare_block}**Memory** (server /metrics; a fresh float32 server, adapters made resident one by one
with LoadAdapter before any Predict traffic). Each adapter's own bytes in the serving dtype
(LoRA A/B of every targeted layer + head, as the server counts them): {adapter_size / MB:.2f} MiB; the
base model's weights: {base_bytes / MB:.0f} MiB.

{memory_table}

RSS after the throughput runs (64 resident): {res["rss_after_traffic"] / MB:.0f} MiB; after unloading all
adapters again: {res["rss_after_unload_all"] / MB:.0f} MiB.

**Cold loads** (`load_seconds` in the LoadAdapter reply: open and checksum-verify the version
in the adapter store and read the LoRA factors and head, on a loader thread; then copy them into
the bank on the torch thread; the server idle):

{cold_table}
{bf16_text}
"""
    return body, summary


if __name__ == "__main__":
    sys.exit(main())
