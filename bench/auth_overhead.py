"""What API-key authentication adds to a Predict call.

One run: start three real `tuneserve serve` processes (the packaged MiniLM, one torch
thread), each in its own temporary data dir, and train the same small Banking77 adapter in
each through the client:

  (a) `--auth none`: the auth interceptor runs but proves nothing (every caller an admin);
  (b) `--auth api_key` with the default `--auth-cache-s` (5 s): a verified key is trusted
      from an in-memory cache, the store is read again once per cache period;
  (c) `--auth api_key --auth-cache-s 0`: no call is answered from the cache, so every call
      takes a thread hop and reads the key's record from the job store (SQLite) to check
      revocation. (The scrypt of the secret is not repeated: a token whose digest was
      verified before needs only the record re-read.)

Then time 1-text Predict calls, one after another, on every server in turn: after
--warmup untimed calls each, the --calls timed calls of each side are split into --rounds
blocks and the sides take turns block by block (order rotating per round, one untimed call
after each switch), so drifting background load on a shared box lands on all of them
alike; the idle servers get no calls meanwhile. Two more sides, on server (b), time refused
calls (UNAUTHENTICATED), --refused-calls of each:

  (d1) the real key id with the same wrong secret every call: the record is read; the
       secret was refused before, so no scrypt (a key's secret never changes);
  (d1') the real key id with a different wrong secret every call (sent on a raw stub):
       record read + scrypt of each new secret, the cost a guessing caller imposes;
  (d2) a key id the store does not know: one store read.

The table (p50 / p95 / mean, and p50 and p95 as a ratio to (a)) is printed, and the
"## Authentication overhead ..." section of docs/benchmarks.md rewritten unless --no-docs.
About 2 minutes on 2 CPU cores.

    PYTHONPATH=server:client .venv/bin/python bench/auth_overhead.py
    PYTHONPATH=server:client .venv/bin/python bench/auth_overhead.py --no-docs  # print only
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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
    summarize,
    training_subset,
    write_docs,
)

SECTION = "## Authentication overhead: Predict with and without API keys (bench/auth_overhead.py)"
ADAPTER = "auth-intents"

# name -> (--auth, extra server flags)
SERVERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "(a) auth none": ("none", ()),
    "(b) api_key, default cache": ("api_key", ()),
    "(c) api_key, --auth-cache-s 0": ("api_key", ("--auth-cache-s", "0")),
}
BASELINE = "(a) auth none"
WRONG_SECRET = "(d1) refused: same wrong secret"
NEW_WRONG_SECRET = "(d1') refused: new wrong secret each call"
UNKNOWN_KEY = "(d2) refused: unknown key id"


def forged_tokens(token: str) -> tuple[str, str]:
    """(the real key id with another well-formed secret, an unknown key id with the real
    secret): both pass the token syntax check, so they reach the store."""
    prefix, key_id, secret = token[:4], token[4:20], token[21:]
    assert prefix == "tsk_" and token[20] == "_" and len(secret) == 43, "unexpected token shape"
    wrong_secret = ("A" if secret[0] != "A" else "B") * 43
    unknown_id = "0" * 16 if key_id != "0" * 16 else "1" * 16
    return f"tsk_{key_id}_{wrong_secret}", f"tsk_{unknown_id}_{secret}"


def take_turns(
    sides: dict[str, tuple[Callable[[int], object], int]], warmup: int, rounds: int
) -> dict[str, list[float]]:
    """Each side is (call(i), timed calls). Every side gets `warmup` untimed calls, then
    `rounds` rounds; in each, every side (order rotating) makes one untimed call and then
    its share of timed calls, one at a time. Returns each side's durations in seconds."""
    names = list(sides)
    for fn, _ in sides.values():
        for i in range(warmup):
            fn(i)
    samples: dict[str, list[float]] = {name: [] for name in names}
    done = dict.fromkeys(names, 0)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fn, n = sides[name]
            block = n * (r + 1) // rounds - n * r // rounds
            fn(done[name])  # one untimed call after switching sides
            for _ in range(block):
                t0 = time.perf_counter()
                fn(done[name])
                samples[name].append(time.perf_counter() - t0)
                done[name] += 1
    return samples


def per_round(values: list[float], rounds: int) -> list[list[float]]:
    """`values` (one side's samples from take_turns, in order) cut back into its rounds."""
    n = len(values)
    return [values[n * r // rounds : n * (r + 1) // rounds] for r in range(rounds)]


def table(results: dict[str, dict[str, float]]) -> str:
    base = results[BASELINE]
    lines = [
        "| config | calls | p50 (ms) | p95 (ms) | mean (ms) | p50 / (a) | p95 / (a) | p50 - (a) (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['n']} | {r['p50']:.2f} | {r['p95']:.2f} | {r['mean']:.2f} "
            f"| {r['p50'] / base['p50']:.2f}x | {r['p95'] / base['p95']:.2f}x | {r['p50'] - base['p50']:+.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200, help="timed 1-text Predict calls per server")
    ap.add_argument("--refused-calls", type=int, default=40, help="timed refused calls of each kind (d1, d2)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed calls per side first")
    ap.add_argument("--rounds", type=int, default=10, help="turns each side's timed calls are split into")
    ap.add_argument("--threads", type=int, default=1, help="server --torch-threads")
    ap.add_argument("--docs", type=Path, default=DOCS, help="markdown file whose section to rewrite")
    ap.add_argument("--no-docs", action="store_true", help="print the table only")
    args = ap.parse_args(argv)

    # SIGTERM (e.g. from a CI timeout) unwinds through the finally below like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from tuneserve_client import Client
    from tuneserve_client.errors import Unauthenticated
    from tuneserve_server.config import Settings

    started = time.monotonic()
    load_before = os.getloadavg()
    texts = [t for t, _ in read_csv("test")]
    examples = training_subset(4, 12)
    tmp = Path(tempfile.mkdtemp(prefix="tuneserve-auth-"))
    servers: dict[str, Server] = {}
    clients: list[Client] = []
    try:
        for i, (name, (auth, extra)) in enumerate(SERVERS.items()):
            (tmp / str(i)).mkdir()  # the server's log goes next to its data dir
            # Three servers at once: each its own /metrics ports (the defaults would clash).
            ports = ("--metrics-port", str(free_port()), "--worker-metrics-port", str(free_port()))
            servers[name] = Server(
                tmp / str(i) / "data", free_port(), args.threads, auth=auth, extra=(*extra, *ports)
            )
        sides: dict[str, tuple[Callable[[int], object], int]] = {}
        for name, server in servers.items():
            server.wait_serving()
            client = Client(server.target, api_key=server.api_key, timeout=120)
            clients.append(client)
            job = client.wait(
                client.train(ADAPTER, examples, max_steps=4, batch_size=16, seed=0),
                timeout=300,
                poll_interval=0.3,
            )
            if job.state != "SUCCEEDED":
                raise RuntimeError(f"{name}: training ended {job.state}: {job.error}")
            ref = f"{ADAPTER}@{job.adapter_version}"
            log(f"{name}: trained {ref} after {time.monotonic() - started:.1f}s")

            def predict(i: int, client: Client = client, ref: str = ref) -> object:
                return client.predict(ref, [texts[i % len(texts)]])

            sides[name] = (predict, args.calls)

        keyed = servers["(b) api_key, default cache"]
        assert keyed.api_key is not None
        for name, token in zip((WRONG_SECRET, UNKNOWN_KEY), forged_tokens(keyed.api_key), strict=True):
            bad = Client(keyed.target, api_key=token, timeout=120)
            clients.append(bad)

            def refused(i: int, bad: Client = bad, name: str = name) -> object:
                try:
                    bad.predict(f"{ADAPTER}@1", [texts[i % len(texts)]])
                except Unauthenticated as err:
                    return err
                raise RuntimeError(f"{name}: the forged key was accepted")

            sides[name] = (refused, args.refused_calls)

        import grpc

        from tuneserve.v1 import inference_pb2, inference_pb2_grpc

        channel = grpc.insecure_channel(keyed.target)
        clients.append(channel)  # closed with the clients
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        key_id = keyed.api_key[4:20]

        guesses = itertools.count(1)  # i repeats across warm-up and rounds; a guess must not

        def guessed(i: int) -> object:
            secret = f"{next(guesses):043d}"  # well formed, never the real one, new every call
            request = inference_pb2.PredictRequest(adapter=f"{ADAPTER}@1", inputs=[texts[i % len(texts)]])
            try:
                stub.Predict(
                    request, metadata=[("authorization", f"Bearer tsk_{key_id}_{secret}")], timeout=120
                )
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                    return err
                raise
            raise RuntimeError(f"{NEW_WRONG_SECRET}: a guessed secret was accepted")

        sides[NEW_WRONG_SECRET] = (guessed, args.refused_calls)

        samples = take_turns(sides, args.warmup, args.rounds)
        results = {name: summarize(values) for name, values in samples.items()}
        blocks = {name: per_round(values, args.rounds) for name, values in samples.items()}
        round_deltas = {
            name: [
                percentile(mine, 50) * 1000 - percentile(base, 50) * 1000
                for mine, base in zip(blocks[name], blocks[BASELINE], strict=True)
            ]
            for name in samples
        }
        for name, server in servers.items():
            rc = server.stop()
            log(f"{name}: server stopped (exit code {rc})")
    except BaseException:
        for name, server in servers.items():
            server.stop()
            tail = server.log_tail()
            if tail:
                print(f"--- {name} server log (tail) ---\n{tail}", file=sys.stderr)
        raise
    finally:
        for client in clients:
            client.close()
        for server in servers.values():
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    load_after = os.getloadavg()
    runtime = time.monotonic() - started
    md = table(results)
    print()
    print(md)
    print()
    for name in list(samples)[1:]:
        d = round_deltas[name]
        print(f"{name}: p50 - (a) per round: {min(d):+.2f} .. {max(d):+.2f} ms")
    print(
        f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}; total runtime {runtime:.0f}s"
    )

    if not args.no_docs:
        cache_default = Settings().auth_cache_s
        wait_default = Settings().max_batch_wait_ms
        spread = "; ".join(
            f"{name[:3]} {min(d):+.2f} to {max(d):+.2f} ms"
            for name, d in ((n, round_deltas[n]) for n in list(SERVERS)[1:])
        )
        body = f"""\
Measured {dt.date.today().isoformat()}, one run of the script; the ratios are to (a).

{md}

- **Servers:** three `tuneserve serve` processes on localhost (API + trainer worker, the
  worker idle while measuring), each with its own temporary data dir (SQLite job store)
  and its own free `/metrics` ports; the packaged MiniLM, float32,
  `--torch-threads {args.threads}`, default batching (`--max-batch-wait-ms`
  {wait_default:g}). (a) `--auth none`; (b) `--auth api_key` with the default
  `--auth-cache-s` ({cache_default:g} s); (c) `--auth api_key --auth-cache-s 0`. (b) and (c)
  are called with an admin key made by `tuneserve keys create`, sent as
  `authorization: Bearer ...` by `tuneserve_client.Client(api_key=...)`.
- **What each config pays per call:** (a) the auth interceptor, returning the all-roles
  principal at once; (b) a SHA-256 of the token and a dict lookup on the event loop, plus
  one store read per {cache_default:g} s; (c) the same digest, then a hop to a worker thread
  and a read of the key's record from the store (the revocation check) on every call. The
  scrypt hash of the secret is paid only on a key's first call per server, in (b) and (c)
  alike: a token verified before skips it. (d1), (d1') and (d2) run against server (b):
  the same wrong secret for the real key id each call (record read; scrypt only the first
  time, since a refused token is remembered), a new wrong secret each call (record read +
  scrypt every call: what a caller guessing secrets costs the server), and a key id the
  store does not know (one store read); all are refused
  UNAUTHENTICATED, with an `auth.failed` audit event, before any model work.
- **Workload:** the same LoRA adapter trained on each server (Banking77, 4 labels x 12
  examples, 4 steps, seed 0); 1-text `Predict` calls with texts from
  `examples/data/banking77/test.csv`, one call at a time; {args.warmup} untimed warm-up
  calls per side, then {args.calls} timed calls per server ({args.refused_calls} per refused
  kind) split into {args.rounds} blocks; the sides take turns block by block (order
  rotating, one untimed call after each switch), so background load drifts over all of
  them alike.
- **Reading the ratio:** p50 / (a) is a config's median call latency over the
  unauthenticated server's on the same workload: 1.00x means no measurable cost, and for
  (d1)/(d2) it compares the time to a refusal with a whole Predict. A 1-text Predict is
  mostly the forward pass, so the p50 difference in ms is the more direct measure of what
  auth adds. How much of it is noise: the p50 difference to (a) within each of the
  {args.rounds} rounds ranged {spread}. p95 mostly measures the background load.
- **Machine:** {cpu_model()}, {os.cpu_count()} CPUs, shared with other work (1-minute load
  average {load_before[0]:.2f} before, {load_after[0]:.2f} after); about
  {max(1, round(runtime / 60))} min for the whole run.
- **Code:** {code_version()}.
- **Reproduce:** `PYTHONPATH=server:client .venv/bin/python bench/auth_overhead.py`.
"""
        write_docs(args.docs, SECTION, body)
        log(f"wrote section to {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
