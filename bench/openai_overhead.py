"""What the OpenAI-compatible HTTP endpoint costs next to gRPC for the same generation.

One `tuneserve api` process serving SmolLM2-135M-Instruct (base_model smollm2, API-key auth
on, 2 torch threads) with `--openai-port`: one engine behind both transports. The same chat
(a system and a user turn, greedy, max_tokens tokens) goes, one call at a time and
alternating between the transports:

* gRPC: `Client.chat` (unary) and `Client.stream(messages=...)` (TTFT: call -> first text delta);
* HTTP: the `openai` SDK's `chat.completions.create` (unary) and `stream=True` (TTFT: call ->
  first chunk with content).

Both give the same text (checked). Tokens/s = completion tokens / wall time of the streamed
call. Run under the heavy-job lock:

    flock /tmp/tuneserve-heavy.lock .venv/bin/python bench/openai_overhead.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import DOCS, Server, code_version, command_as_run, cpu_model, free_port, log, write_docs

SECTION = "## OpenAI-compatible HTTP vs. gRPC: one generation (bench/openai_overhead.py)"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write three sentences about the ocean."},
]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10, help="calls per transport and mode")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--docs", type=Path, default=DOCS, help="markdown file whose section to rewrite")
    args = ap.parse_args(argv)

    import openai

    from tuneserve_client import Client

    tmp = Path(tempfile.mkdtemp(prefix="tuneserve-openai-bench-"))
    http_port = free_port()
    server = Server(
        tmp / "data",
        free_port(),
        threads=2,
        auth="api_key",
        role="api",
        extra=["--base-model", "smollm2", "--openai-port", str(http_port), "--max-new-tokens-limit", "256"],
    )
    try:
        server.wait_serving(timeout=300)
        client = Client(server.target, api_key=server.api_key, timeout=120)
        sdk = openai.OpenAI(
            base_url=f"http://127.0.0.1:{http_port}/v1", api_key=server.api_key, max_retries=0
        )
        base = client.server_info().base_model
        n = args.max_tokens

        def grpc_unary() -> tuple[str, int]:
            g = client.chat(None, MESSAGES, max_new_tokens=n)
            return g.text, g.completion_tokens

        def http_unary() -> tuple[str, int]:
            r = sdk.chat.completions.create(model=base, messages=MESSAGES, max_tokens=n)
            return r.choices[0].message.content, r.usage.completion_tokens

        def grpc_stream() -> tuple[str, int, float]:
            start, first = time.perf_counter(), None
            with client.stream(None, messages=MESSAGES, max_new_tokens=n) as s:
                parts = []
                for delta in s:
                    if first is None:
                        first = time.perf_counter() - start
                    parts.append(delta)
            return "".join(parts), s.final.completion_tokens, first

        def http_stream() -> tuple[str, int, float]:
            start, first, parts, tokens = time.perf_counter(), None, [], 0
            for chunk in sdk.chat.completions.create(
                model=base,
                messages=MESSAGES,
                max_tokens=n,
                stream=True,
                stream_options={"include_usage": True},
            ):
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
                if chunk.choices and chunk.choices[0].delta.content:
                    if first is None:
                        first = time.perf_counter() - start
                    parts.append(chunk.choices[0].delta.content)
            return "".join(parts), tokens, first

        for fn in (grpc_unary, http_unary, grpc_stream, http_stream):  # warm-up
            fn()
        results: dict[str, list[float]] = {k: [] for k in ("gu", "hu", "gt", "ht", "gs", "hs")}
        texts = set()
        for i in range(args.repeats):
            for transport in ("grpc", "http") if i % 2 == 0 else ("http", "grpc"):
                t = transport[0]
                start = time.perf_counter()
                text, tokens = grpc_unary() if t == "g" else http_unary()
                results[f"{t}u"].append(time.perf_counter() - start)
                texts.add(text)
                start = time.perf_counter()
                text, tokens, first = grpc_stream() if t == "g" else http_stream()
                total = time.perf_counter() - start
                results[f"{t}t"].append(first)
                results[f"{t}s"].append(tokens / total)
                texts.add(text)
        if len(texts) != 1:
            raise RuntimeError(f"the transports gave different texts: {texts}")
        tokens_out = tokens
        server.stop()
    except BaseException:
        log(server.log_tail())
        server.stop()
        raise

    med = {k: statistics.median(v) for k, v in results.items()}
    rows = [
        (
            "non-streamed latency, median",
            f"{med['gu'] * 1000:.1f} ms",
            f"{med['hu'] * 1000:.1f} ms",
            f"{med['hu'] / med['gu']:.3f}x",
            f"{(med['hu'] - med['gu']) * 1000:+.1f} ms",
        ),
        (
            "streamed time to first token, median",
            f"{med['gt'] * 1000:.1f} ms",
            f"{med['ht'] * 1000:.1f} ms",
            f"{med['ht'] / med['gt']:.3f}x",
            f"{(med['ht'] - med['gt']) * 1000:+.1f} ms",
        ),
        (
            "streamed tokens/s, median",
            f"{med['gs']:.1f}",
            f"{med['hs']:.1f}",
            f"{med['hs'] / med['gs']:.3f}x",
            f"{med['hs'] - med['gs']:+.1f}",
        ),
    ]
    table = [
        "| measure | gRPC (tuneserve client) | HTTP (openai SDK) | HTTP / gRPC | difference |",
        "|---|---|---|---|---|",
    ]
    table += [f"| {' | '.join(r)} |" for r in rows]
    print("\n".join(table))
    body = f"""Measured {time.strftime("%Y-%m-%d")}, one run. Command: `flock /tmp/tuneserve-heavy.lock {command_as_run("openai_overhead.py", argv)}` on
{cpu_model()} (2 cores), {code_version()}. One `tuneserve api` process (SmolLM2-135M-Instruct,
float32, 2 torch threads, API-key auth) serving gRPC and `--openai-port` from one engine; the
same chat ({len(MESSAGES)} turns, greedy, {tokens_out} completion tokens, identical text on
both) called {args.repeats} times per transport and mode, one call at a time, alternating the
order. TTFT: call to the first text delta (gRPC) / the first chunk with content (SSE).

{chr(10).join(table)}

The HTTP path adds JSON + SSE framing and the SDK's pydantic parsing on the client side
(on this 2-core machine the client process competes with the server for the same cores); the
engine work (prefill, decode steps) is the same for both transports."""
    write_docs(args.docs, SECTION, body)
    log(f"wrote {SECTION!r} to {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
