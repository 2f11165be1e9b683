"""Preference tuning end to end on the real SmolLM2-135M-Instruct (served base = smollm2): a
real API and worker, preference pairs built from the support_style data (chosen = the house
format, rejected = the base model's own greedy reply, examples/data/support_style/
preference.jsonl) uploaded with UploadDataset, an SFT version of `support-dpo` trained first,
then a DPO version of the same adapter from it (init_from="support-dpo@1": the policy starts
as the SFT adapter and the reference is the SFT adapter, frozen; the name hot-swaps to the new
version), and generation through the real client: the DPO adapter serves like any causal-LM
adapter (mixed batches with the base, streaming equal to unary). Bad preference data and
settings are refused with field-level errors before anything is queued."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ROOT, Proc, free_port, wait_serving

from tuneserve_client import Client, InvalidArgument

PAIRS = ROOT / "examples" / "data" / "support_style" / "preference.jsonl"
HELD_OUT = ["My parcel was stolen from my doorstep.", "The app won't let me upload a photo."]


def pairs() -> list[dict[str, str]]:
    return [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Client]]:
    root = tmp_path_factory.mktemp("pref")
    settings = {"base_model": "smollm2", "max_new_tokens_limit": 128}
    api = Proc("api", root / "data", root, port=free_port(), **settings)
    worker = None
    try:
        wait_serving(api.target, timeout=240)
        worker = Proc("worker", root / "data", root, **settings)
        client = Client(api.target, timeout=60, api_key=api.api_key)
        yield api, client
        client.close()
    finally:
        for proc in (worker, api):
            if proc is not None and proc.stop() not in (0, None):
                print(f"--- {proc.role} log ---\n{proc.log()[-4000:]}")


def test_sft_then_dpo_through_the_service_and_the_dpo_adapter_serves(lm, tmp_path) -> None:
    _, client = lm
    rows = pairs()
    sft = client.train(
        "support-dpo",
        [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows[:16]],
        task="causal_lm",
        validation=[{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows[60:64]],
        lora_rank=8,
        learning_rate=3e-3,
        batch_size=8,
        max_steps=2,
        warmup_ratio=0.0,
        max_seq_length=128,
        sample_generations=0,
        request_id="pref-sft-v1",
    )
    sft = client.wait(sft, timeout=900, poll_interval=0.5)
    assert sft.state == "SUCCEEDED", sft.error

    train = tmp_path / "pairs.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))
    dataset = client.upload_dataset(train, task="preference")
    assert dataset.usable_rows == 16 and dataset.task == "preference"
    job = client.train(
        "support-dpo",
        task="preference",
        dataset=dataset,
        validation=[
            {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows[60:64]
        ],
        init_from="support-dpo@1",
        learning_rate=1e-3,
        batch_size=4,
        max_steps=3,
        warmup_ratio=0.0,
        max_seq_length=128,
        beta=0.1,
        request_id="pref-dpo-v2",
    )
    job = client.wait(job, timeout=900, poll_interval=0.5)
    assert job.state == "SUCCEEDED", job.error
    assert job.task == "preference" and job.train_examples == 16 and job.validation_examples == 4
    assert job.init_from == "support-dpo@1"
    m = job.metrics
    for name in ("eval_loss", "rewards/accuracy", "rewards/margin", "logps/chosen", "ref_logps/rejected"):
        assert name in m, sorted(m)
    # the reference ran once per pair met: 3 steps x 4 training pairs, and the 4 validation pairs
    assert m["reference_forwards"] == 3 * 4 + 4
    assert m["eval_loss"] < m["ref_eval_loss"]  # three steps already move the policy the right way
    # (that the reference is the SFT adapter, frozen, is checked against the SFT model itself in
    # tests/unit/server/training/test_preference_recipe.py; two SFT steps need not yet prefer chosen)
    assert 0.0 <= m["ref_preference_accuracy"] <= 1.0

    adapter = client.get_adapter("support-dpo")
    assert adapter.task == "causal_lm" and adapter.latest_version == 2  # a DPO adapter is a causal-LM one

    # Serves like any causal-LM adapter: the name now resolves to the DPO version; mixed
    # batches with the base give each request its own adapter; streaming equals unary.
    unary = client.generate("support-dpo", HELD_OUT[0], max_new_tokens=32)
    stream = client.stream("support-dpo", HELD_OUT[0], max_new_tokens=32)
    assert "".join(stream) == unary.text == stream.final.text
    assert (stream.adapter_name, stream.adapter_version) == ("support-dpo", 2)
    base = client.generate(None, HELD_OUT[1], max_new_tokens=32).text
    with ThreadPoolExecutor(2) as pool:
        tuned = pool.submit(client.generate, "support-dpo", HELD_OUT[0], max_new_tokens=32)
        plain = pool.submit(client.generate, None, HELD_OUT[1], max_new_tokens=32)
        assert tuned.result().text == unary.text and plain.result().text == base
    assert unary.text != client.generate(None, HELD_OUT[0], max_new_tokens=32).text


def test_bad_preference_requests_are_refused_with_field_errors(lm) -> None:
    _, client = lm
    rows = pairs()[:12]
    with pytest.raises(InvalidArgument) as err:
        client.train(
            "bad-dpo", [{**r, "rejected": ""} if i == 3 else r for i, r in enumerate(rows)], task="preference"
        )
    assert ("training_examples[3].preference.rejected", "must not be empty") in err.value.field_violations
    same = [{**r, "rejected": r["chosen"]} for r in rows]
    with pytest.raises(InvalidArgument) as err:
        client.train("bad-dpo", same, task="preference")
    assert err.value.field_violations[0][0] == "training_examples"
    assert any(i.code == "identical_pair" for i in err.value.data_report.errors)
    with pytest.raises(InvalidArgument) as err:
        client.train("bad-dpo", rows, task="preference", loss_type="hinge")
    assert err.value.field_violations[0][0] == "hyperparameters.preference.loss_type"
    assert [j for j in client.list_jobs() if j.adapter_name == "bad-dpo"] == []
