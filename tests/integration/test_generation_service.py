"""Causal LM end to end on the real SmolLM2-135M-Instruct (served base = smollm2): a real API
and worker, an adapter trained through the service on a fixed support-reply format, and
generation through the real client: the adapter's replies follow the format and the base's
do not; streaming gives the unary text; a cancelled stream stops its row; bad sampling
settings are INVALID_ARGUMENT naming the field; a classification call is refused."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from conftest import ROOT, Proc, free_port, wait_serving

from tuneserve_client import Client, FailedPrecondition, InvalidArgument

DATA = ROOT / "examples" / "data" / "support_style" / "train.jsonl"
FORMAT_START = "Summary:"
HELD_OUT = [  # not in the training data
    "My parcel was stolen from my doorstep.",
    "How do I change my phone number on the account?",
    "The app won't let me upload a photo.",
]


def support_examples() -> list[dict[str, str]]:
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Client, object]]:
    """One SmolLM2 API (started first: it writes the dequantised model cache the worker then
    reads) and one worker, and a `support-style` adapter trained through the service."""
    root = tmp_path_factory.mktemp("lm")
    settings = {"base_model": "smollm2", "max_new_tokens_limit": 256}
    api = Proc("api", root / "data", root, port=free_port(), **settings)
    worker = None
    try:
        wait_serving(api.target, timeout=240)
        worker = Proc("worker", root / "data", root, **settings)
        client = Client(api.target, timeout=60, api_key=api.api_key)
        rows = support_examples()
        job = client.train(
            "support-style",
            rows[:48],
            task="causal_lm",
            validation=rows[48:54],
            lora_rank=8,
            learning_rate=3e-3,
            batch_size=8,
            max_steps=12,
            warmup_ratio=0.0,
            max_seq_length=128,
            sample_generations=2,
            request_id="lm-style-v1",
        )
        job = client.wait(job, timeout=900, poll_interval=0.5)
        assert job.state == "SUCCEEDED", job.error
        yield api, client, job
        client.close()
    finally:
        for proc in (worker, api):
            if proc is not None and proc.stop() not in (0, None):
                print(f"--- {proc.role} log ---\n{proc.log()[-4000:]}")


def test_trained_adapter_follows_the_format_and_the_base_does_not(lm) -> None:
    _, client, job = lm
    assert job.metrics["eval_loss"] < job.metrics["base_eval_loss"]
    assert job.metrics["perplexity"] > 1.0 and job.metrics["truncated_rows"] == 0
    assert len(job.sample_generations) == 2
    assert all(s.generated.startswith(FORMAT_START) for s in job.sample_generations), job.sample_generations

    tuned = client.generate("support-style", HELD_OUT, max_new_tokens=48)
    base = client.generate(None, HELD_OUT, max_new_tokens=48)
    assert all(g.text.startswith(FORMAT_START) for g in tuned), [g.text for g in tuned]
    assert not any(g.text.startswith(FORMAT_START) for g in base), [g.text for g in base]
    assert all("Next step:" in g.text for g in tuned), [g.text for g in tuned]
    for g in tuned + base:
        assert g.prompt_tokens > 0 and 0 < g.completion_tokens <= 48
        assert g.finish_reason in ("eos", "length")

    # Stop sequences end the text before the stop; the adapter's format makes one certain.
    stopped = client.generate("support-style", HELD_OUT[0], max_new_tokens=48, stop=["Next step"])
    assert stopped.finish_reason == "stop" and "Next step" not in stopped.text
    assert stopped.text.startswith(FORMAT_START)


def test_streaming_gives_the_unary_text_and_names_the_adapter(lm) -> None:
    _, client, _ = lm
    for adapter in ("support-style", None):
        unary = client.generate(adapter, HELD_OUT[1], max_new_tokens=40)
        stream = client.stream(adapter, HELD_OUT[1], max_new_tokens=40)
        deltas = list(stream)
        assert len(deltas) > 3  # text arrived piece by piece
        assert "".join(deltas) == unary.text == stream.final.text
        assert stream.final.finish_reason == unary.finish_reason
        assert stream.final.completion_tokens == unary.completion_tokens
        assert (stream.adapter_name, stream.adapter_version) == (("support-style", 1) if adapter else ("", 0))


def test_seeded_sampling_repeats_and_mixed_batches_keep_each_requests_settings(lm) -> None:
    _, client, _ = lm
    prompt = "Write one sentence about the sea."
    params = {"max_new_tokens": 24, "temperature": 1.0, "top_p": 0.95, "seed": 7}
    first = client.generate(None, prompt, **params).text
    assert client.generate(None, prompt, **params).text == first
    greedy = client.generate("support-style", HELD_OUT[2], max_new_tokens=24).text
    # The same calls at once (one decoding batch, mixed adapters and settings): no leaks.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        sampled = pool.submit(client.generate, None, prompt, **params)
        hot = pool.submit(client.generate, None, prompt, max_new_tokens=24, temperature=1.5, seed=99)
        tuned = pool.submit(client.generate, "support-style", HELD_OUT[2], max_new_tokens=24)
        assert sampled.result().text == first
        assert tuned.result().text == greedy
        hot.result()


def test_cancelled_stream_stops_its_row(lm) -> None:
    api, client, _ = lm
    before = api.metrics()
    stream = client.stream(None, "Write a very long story about a lighthouse keeper.", max_new_tokens=250)
    pieces = iter(stream)
    for _ in range(3):
        next(pieces)
    stream.cancel()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # bounded wait for the server to drop the row
        after = api.metrics()
        if after.get("tuneserve_generation_cancelled_total", 0) > before.get(
            "tuneserve_generation_cancelled_total", 0
        ):
            break
        time.sleep(0.2)
    assert (
        after["tuneserve_generation_cancelled_total"]
        == before.get("tuneserve_generation_cancelled_total", 0) + 1
    )
    assert after["tuneserve_generation_active_rows"] == 0
    produced = after["tuneserve_generation_tokens_total"] - before.get("tuneserve_generation_tokens_total", 0)
    assert produced < 250, "the cancelled row kept generating"
    assert client.generate(None, "Say hello.", max_new_tokens=8).completion_tokens > 0  # slot free again


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"temperature": -0.5}, "generation.temperature"),
        ({"top_p": 1.5}, "generation.top_p"),
        ({"top_p": 0.0}, "generation.top_p"),
        ({"max_new_tokens": 257}, "generation.max_new_tokens"),
        ({"stop": [""]}, "generation.stop[0]"),
    ],
)
def test_bad_sampling_settings_are_invalid_argument_naming_the_field(lm, params, field) -> None:
    _, client, _ = lm
    with pytest.raises(InvalidArgument) as err:
        client.generate(None, "hi", **params)
    assert field in [v[0] for v in err.value.field_violations]
    with pytest.raises(InvalidArgument) as err:
        list(client.stream(None, "hi", **params))
    assert field in [v[0] for v in err.value.field_violations]


def test_empty_input_and_classification_calls_are_refused(lm) -> None:
    _, client, _ = lm
    with pytest.raises(InvalidArgument) as err:
        list(client.stream(None, "   "))
    assert "input" in [v[0] for v in err.value.field_violations]
    with pytest.raises(FailedPrecondition, match="causal_lm"):
        client.train("intents", [("a", "x"), ("b", "y")] * 10, request_id="lm-wrong-task")


def test_cli_predict_streams_and_generates(lm, capsys) -> None:
    from tuneserve_client.cli import main

    api, client, _ = lm
    want = client.generate("support-style", HELD_OUT[0], max_new_tokens=30).text
    assert (
        main(
            [
                "--target",
                api.target,
                "--api-key",
                api.api_key,
                "predict",
                "--adapter",
                "support-style",
                "--stream",
                "--max-new-tokens",
                "30",
                HELD_OUT[0],
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert out == want + "\n" and "completion tokens" in err
    assert (
        main(
            [
                "--target",
                api.target,
                "--api-key",
                api.api_key,
                "--json",
                "predict",
                "--adapter",
                "support-style",
                "--max-new-tokens",
                "30",
                HELD_OUT[0],
            ]
        )
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    assert payload[0]["text"] == want and payload[0]["input"] == HELD_OUT[0]
    assert (
        main(["--target", api.target, "--api-key", api.api_key, "predict", "--temperature", "-1", "hi"]) != 0
    )
    assert "generation.temperature" in capsys.readouterr().err


def test_an_encoder_server_refuses_generation_naming_what_it_serves(cluster) -> None:
    with cluster.client(timeout=30) as client:
        with pytest.raises(FailedPrecondition, match="all-MiniLM-L6-v2, a classification model"):
            client.generate(None, "hello")
        with pytest.raises(FailedPrecondition, match="all-MiniLM-L6-v2, a classification model"):
            list(client.stream(None, "hello"))


def test_an_evaluation_of_the_adapter_and_the_base_model(lm) -> None:
    """EvaluationService on a causal LM: the trained adapter and the bare base model on
    held-out rows, run by the worker: the adapter's completion loss is the lower one, the
    perplexity is exp(loss), the adapter's samples follow the format, and the comparison
    bootstraps the loss difference."""
    import math

    _, client, job = lm
    rows = support_examples()[54:62]
    ev = client.create_evaluation(
        ["support-style"], rows, include_base=True, sample_generations=2, bootstrap_resamples=200
    )
    tuned_name = f"support-style@{job.adapter_version}"
    assert ev.targets == (tuned_name, "base") and ev.task == "causal_lm"
    ev = client.wait_evaluation(ev, timeout=900)
    assert ev.state == "SUCCEEDED", ev.error
    tuned, base = ev.result(tuned_name), ev.result("base")
    assert tuned.metrics["eval_loss"] < base.metrics["eval_loss"]
    for r in (tuned, base):
        assert r.metrics["perplexity"] == pytest.approx(math.exp(r.metrics["eval_loss"]), rel=1e-6)
        assert r.metrics["rows"] == len(rows) and len(r.samples) == 2 and not r.per_label
        assert 0 <= r.metrics["exact_match"] <= r.metrics["contains_reference"] <= 1
    assert all(s.generated.startswith(FORMAT_START) for s in tuned.samples), tuned.samples
    assert [s.reference for s in tuned.samples] == [r["completion"] for r in rows[:2]]
    [c] = ev.comparisons
    assert (c.a, c.b, c.mcnemar.metric) == (tuned_name, "base", "exact_match")
    [loss] = c.bootstrap
    assert (
        loss.metric == "eval_loss" and loss.difference > 0 and loss.ci_low <= loss.difference <= loss.ci_high
    )
