"""Feedback on generations through the real server and client (SmolLM2-135M-Instruct, an
adapter trained in a few steps through the service): generate / stream return prediction
ids (the bare base model none), a rating and a corrected text are stored, inputs and served
texts are not kept unless the adapter's store_inputs is on (feedback then carries them),
and corrected generations export as {"prompt", "chosen", "rejected"} preference pairs and as
a {"prompt", "completion"} dataset."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from conftest import ROOT, Proc, free_port, wait_serving

from tuneserve_client import Client, InvalidArgument

DATA = ROOT / "examples" / "data" / "support_style" / "train.jsonl"


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    root = tmp_path_factory.mktemp("feedback-lm")
    settings = {"base_model": "smollm2", "max_new_tokens_limit": 256}
    api = Proc("api", root / "data", root, port=free_port(), **settings)
    worker = None
    try:
        wait_serving(api.target, timeout=240)
        worker = Proc("worker", root / "data", root, **settings)
        client = Client(api.target, timeout=120, api_key=api.api_key)
        rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
        job = client.train(
            "replies",
            rows[:16],
            task="causal_lm",
            validation=rows[48:50],
            lora_rank=4,
            batch_size=8,
            max_steps=2,
            warmup_ratio=0.0,
            max_seq_length=96,
            request_id="fb-lm-v1",
        )
        job = client.wait(job, timeout=900, poll_interval=0.5)
        assert job.state == "SUCCEEDED", job.error
        yield client
        client.close()
    finally:
        for proc in (worker, api):
            if proc is not None and proc.stop() not in (0, None):
                print(f"--- {proc.role} log ---\n{proc.log()[-4000:]}")


def test_generation_feedback_to_preference_pairs(lm: Client) -> None:
    prompt, other = "My parcel was stolen from my doorstep.", "How do I change my phone number?"
    base = lm.generate(None, prompt, max_new_tokens=4)
    assert base.prediction_id == ""  # the bare base model: no id
    served = lm.generate("replies", prompt, max_new_tokens=8)
    assert served.prediction_id.startswith("pr-")

    # inputs and served texts are not stored by default: a correction must carry both
    with pytest.raises(InvalidArgument) as exc:
        lm.submit_feedback(served.prediction_id, corrected_text="Summary: parcel stolen.")
    assert {f for f, _ in exc.value.field_violations} == {"input", "served_text"}
    with pytest.raises(InvalidArgument) as exc:
        lm.submit_feedback(served.prediction_id, label="good", input=prompt)
    assert [f for f, _ in exc.value.field_violations] == ["label"]
    rated = lm.submit_feedback(served.prediction_id, rating=2)  # a rating alone needs neither
    assert rated.rating == 2 and rated.input == ""
    fixed = lm.submit_feedback(
        served.prediction_id,
        rating=1,
        corrected_text="Summary: parcel stolen. Next step: we open a claim.",
        input=prompt,
        served_text=served.text,
    )
    assert (fixed.input, fixed.served_text, fixed.task) == (prompt, served.text, "causal_lm")

    # with store_inputs on, the server keeps prompt and text: the correction alone suffices
    lm.set_feedback_settings("replies", store_inputs=True)
    stream = lm.stream("replies", other, max_new_tokens=8)
    streamed = "".join(stream)
    assert stream.final is not None and stream.final.prediction_id.startswith("pr-")
    kept = lm.submit_feedback(stream.final.prediction_id, corrected_text="Summary: number change.", rating=4)
    assert (kept.input, kept.served_text) == (other, streamed)

    version = lm.get_adapter("replies").versions[-1].feedback
    assert version is not None and (version.rated, version.corrected, version.answered) == (2, 2, 0)
    assert version.mean_rating == pytest.approx(2.5)

    pairs = lm.export_feedback("replies", kind="preference_pairs")
    assert pairs.dataset is None and pairs.rows == 2
    rows = [json.loads(line) for line in pairs.jsonl.decode().splitlines()]
    assert rows == [
        {"prompt": prompt, "chosen": fixed.corrected_text, "rejected": served.text},
        {"prompt": other, "chosen": kept.corrected_text, "rejected": streamed},
    ]
    sft = lm.export_feedback("replies")  # auto: completions for a causal-LM adapter
    assert sft.dataset is not None and sft.dataset.task == "causal_lm" and sft.dataset.usable_rows == 2
