"""Aliases and promotion through a real server, worker, client and CLI (SQLite): a version
trained under `manual` is registered but not served by the bare name, a manual promote and a
rollback move what Predict(name) serves, `name@alias` and `name@latest` resolve everywhere,
an aliased version cannot be deleted, bad alias names and promotion settings are refused
with field-level errors, and the history says who moved what, when and why."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import LABELS, auth_channel, banking77

from tuneserve.v1 import inference_pb2, inference_pb2_grpc
from tuneserve_client.errors import FailedPrecondition, InvalidArgument, NotFound

PROBE = ["my card has not arrived yet"]


def _cli(cluster, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tuneserve_client.cli", "--target", cluster.api.target]
    return subprocess.run(
        [*cmd, "--api-key", cluster.api.api_key, *args], capture_output=True, text=True, timeout=600
    )


def _served(cluster, adapter: str) -> int:
    """The version Predict answered with (the client's predict() returns labels only)."""
    with auth_channel(cluster.api) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        reply = stub.Predict(inference_pb2.PredictRequest(adapter=adapter, inputs=PROBE), timeout=30)
    return reply.adapter_version


@pytest.fixture(scope="module")
def release(cluster, tmp_path_factory):
    """`release` v1 (policy always, the default) through the client, v2 under `manual`
    through the CLI's `train --promotion manual --wait`."""
    data = banking77("train", per_label=8)
    with cluster.client(timeout=60) as client:
        v1 = client.wait(client.train("release", data, epochs=1, seed=1), timeout=600, poll_interval=0.3)
        assert v1.state == "SUCCEEDED", v1.error
    path = tmp_path_factory.mktemp("release") / "train.csv"
    path.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in data))
    done = _cli(
        cluster,
        "--json",
        "train",
        "--adapter",
        "release",
        "--data",
        str(path),
        "--epochs",
        "1",
        "--seed",
        "2",
        "--promotion",
        "manual",
        "--wait",
    )
    assert done.returncode == 0, done.stderr
    v2 = json.loads(done.stdout.strip().splitlines()[-1])
    return v1, v2


def test_manual_promote_rollback_and_the_bare_name_follows_default(cluster, release):
    v1, v2 = release
    assert (v1.adapter_version, v2["adapter_version"]) == (1, 2)
    assert v2["promotion_policy"] == "manual" and v2["promotion_result"]["promoted"] is False
    with cluster.client(timeout=60) as client:
        job2 = client.get_job(v2["id"])
        assert job2.promotion_result is not None and not job2.promotion_result.promoted
        assert "manual" in job2.promotion_result.reason
        assert job2.promotion_result is not None
        adapter = client.get_adapter("release")
        assert (adapter.default_version, adapter.latest_version, adapter.aliases) == (1, 2, {"default": 1})
        assert [v.aliases for v in adapter.versions] == [("default",), ()]
        # Registered, not served by the bare name; reachable by version and by `latest`.
        assert _served(cluster, "release") == 1
        assert _served(cluster, "release@2") == 2 and _served(cluster, "release@latest") == 2
        assert _served(cluster, "release@default") == 1

        move, after = client.promote_version("release@2", reason="checked by hand")
        assert (move.from_version, move.to_version, move.reason) == (1, 2, "checked by hand")
        assert after.default_version == 2
        assert _served(cluster, "release") == 2  # this replica at once (it refreshed)

        with pytest.raises(FailedPrecondition, match="default"):
            client.delete_adapter("release@2")

        move, after = client.rollback("release", reason="regression on top_up")
        assert (move.from_version, move.to_version) == (2, 1)
        assert _served(cluster, "release") == 1
        history = list(client.alias_history("release", alias="default"))
        assert [(m.from_version, m.to_version) for m in history] == [(2, 1), (1, 2), (0, 1)]
        assert [m.reason for m in history[:2]] == ["regression on top_up", "checked by hand"]
        assert history[2].actor == f"job:{v1.id}"
        assert history[0].actor and history[0].actor == history[1].actor  # the caller's key id
        assert history[0].tenant == "default" and history[0].time is not None

        # A named alias: name@alias works for Predict, LoadAdapter, ExportAdapter, Unload.
        move, _ = client.set_alias("release@2", "canary", reason="10% traffic")
        assert (move.from_version, move.to_version) == (0, 2)
        assert _served(cluster, "release@canary") == 2
        loaded = client.load_adapter("release@canary", pin=True)
        assert (loaded.version, loaded.pinned) == (2, True)
        assert client.unload_adapter("release@canary") == [2]
        with pytest.raises(FailedPrecondition, match="canary"):
            client.delete_adapter("release@2")
        with pytest.raises(FailedPrecondition, match="canary"):
            client.delete_adapter("release@canary")
        client.delete_alias("release", "canary", reason="done")
        with pytest.raises(NotFound, match="no alias 'canary'"):
            client.predict("release@canary", PROBE)


def test_cli_alias_commands(cluster, release):
    done = _cli(cluster, "adapters", "alias", "set", "release@2", "beta", "--reason", "cli")
    assert done.returncode == 0 and "release@beta -> version 2" in done.stdout, done.stderr
    listed = _cli(cluster, "adapters", "alias", "list", "release")
    assert "beta" in listed.stdout and "latest" in listed.stdout, listed.stderr
    history = _cli(cluster, "adapters", "alias", "history", "release", "--alias", "beta")
    assert "cli" in history.stdout, history.stderr
    promoted = _cli(cluster, "--json", "adapters", "promote", "release@2", "--reason", "cli promote")
    assert promoted.returncode == 0 and json.loads(promoted.stdout)["to_version"] == 2, promoted.stderr
    rolled = _cli(cluster, "adapters", "rollback", "release")
    assert rolled.returncode == 0 and "release@default -> version 1" in rolled.stdout, rolled.stderr
    gone = _cli(cluster, "adapters", "alias", "delete", "release", "beta")
    assert gone.returncode == 0, gone.stderr
    shown = _cli(cluster, "adapters", "get", "release")
    assert "default:     1" in shown.stdout, shown.stderr


@pytest.mark.parametrize(
    "alias, why",
    [
        ("Prod", "not a valid alias"),
        ("9lives", "not a valid alias"),
        ("x" * 33, "not a valid alias"),
        ("latest", "reserved"),
    ],
)
def test_bad_alias_names_are_refused_with_the_field(cluster, release, alias, why):
    with cluster.client(timeout=60) as client, pytest.raises(InvalidArgument, match=why) as err:
        client.set_alias("release@1", alias)
    assert err.value.field_violations[0][0] == "alias"


def test_refusals_of_alias_calls(cluster, release):
    with cluster.client(timeout=60) as client:
        with pytest.raises(InvalidArgument) as err:
            client.set_alias("release", "prod")  # which version?
        assert err.value.field_violations[0][0] == "adapter"
        with pytest.raises(InvalidArgument) as err:
            client.set_alias("release@1", "prod", reason="x" * 501)
        assert err.value.field_violations[0][0] == "reason"
        with pytest.raises(NotFound, match="no version 9"):
            client.set_alias("release@9", "prod")
        with pytest.raises(NotFound):
            client.promote_version("never-existed@1")
        with pytest.raises(FailedPrecondition, match="'default'"):
            client.delete_alias("release", "default")
        with pytest.raises(InvalidArgument):
            client.predict("release@Bad!", PROBE)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"promotion": "manual", "promotion_tolerance": 0.1}, "promotion.tolerance"),
        ({"promotion": "if_better", "promotion_metric": "bleu"}, "promotion.metric"),
        ({"promotion": "if_better", "promotion_tolerance": 2.0}, "promotion.tolerance"),
        ({"promotion": "always", "promotion_eval_dataset": "ds-1"}, "promotion.eval_dataset_id"),
    ],
)
def test_bad_promotion_settings_are_refused_with_the_field(cluster, kwargs, field):
    with cluster.client(timeout=60) as client, pytest.raises(InvalidArgument) as err:
        client.train("release", banking77("train", per_label=4), epochs=1, **kwargs)
    assert field in [f for f, _ in err.value.field_violations]


def test_continued_training_from_an_alias_is_pinned_and_recorded(cluster, release):
    """Train(init_from="release@default") starts from the version default points at when the
    job is queued; new data with one new label and without one old label: the new version
    keeps every old label and adds the new one; lineage is in GetJob and GetAdapter."""

    data = banking77("train", labels=(*LABELS[1:], "card_linking"), per_label=8)
    with cluster.client(timeout=60) as client:
        default = client.get_adapter("release").default_version
        job = client.train("grown", data, epochs=1, init_from="release@default")
        assert (job.init_from, job.init_from_requested) == (f"release@{default}", "release@default")
        job = client.wait(job, timeout=600, poll_interval=0.3)
        assert job.state == "SUCCEEDED", job.error
        adapter = client.get_adapter("grown")
        (version,) = adapter.versions
        assert version.init_from == f"release@{default}"
        assert set(version.labels) == {*LABELS, "card_linking"}  # card_arrival kept, card_linking new
        events = [e.message for e in client.watch_job(job.id)]
        # (32 rows: cross-validated, so each fold's recipe says it, prefixed "fold i/k: ")
        assert any(f"started from release@{default}; new labels" in m for m in events), events

        with pytest.raises(InvalidArgument) as err:  # the rank must be the init version's
            client.train("grown", data, epochs=1, init_from="release@1", lora_rank=4)
        assert err.value.field_violations[0][0] == "init_from"
        with pytest.raises(NotFound):
            client.train("grown", data, epochs=1, init_from="never-existed@1")
        with pytest.raises(InvalidArgument) as err:
            client.train("grown", data, epochs=1, init_from="release@Bad")
        assert err.value.field_violations[0][0] == "init_from"


def test_if_better_keeps_a_worse_version_out_and_promotes_a_good_one(cluster):
    """v1 validated on held-out Banking77 rows (the adapter's stored evaluation set from then
    on); v2 trained on label-shuffled data under if_better is not promoted and Predict(name)
    keeps serving v1; v3 continued from v1 on the good data under if_better is promoted. The
    job result and events carry both scores and the decision; the evaluation ran in the worker."""
    import random

    good = banking77("train", per_label=12)
    held_out = banking77("test", per_label=10)
    labels = [label for _, label in good]
    random.Random(0).shuffle(labels)
    shuffled = [(text, label) for (text, _), label in zip(good, labels, strict=True)]
    with cluster.client(timeout=60) as client:
        v1 = client.wait(
            client.train("gated", good, validation=held_out, epochs=2), timeout=600, poll_interval=0.3
        )
        assert v1.state == "SUCCEEDED", v1.error
        bad = client.train("gated", shuffled, epochs=2, promotion="if_better", promotion_metric="accuracy")
        bad = client.wait(bad, timeout=600, poll_interval=0.3)
        assert bad.state == "SUCCEEDED", bad.error
        r = bad.promotion_result
        assert r is not None and not r.promoted, r
        assert (r.metric, r.compared_version, r.eval_examples) == ("accuracy", 1, len(held_out))
        assert r.new_score is not None and r.current_score is not None and r.new_score < r.current_score
        assert "regressed" in r.reason and "validation set of gated@1" in r.reason
        assert _served(cluster, "gated") == 1
        assert client.get_adapter("gated").default_version == 1
        gate_events = [
            e for e in client.watch_job(bad.id) if e.type == "EVALUATION" and "if_better" in e.message
        ]
        assert len(gate_events) == 1
        assert gate_events[0].metrics == {"current_accuracy": r.current_score, "new_accuracy": r.new_score}

        good_job = client.train(
            "gated", good, epochs=2, init_from="gated@1", promotion="if_better", promotion_tolerance=0.02
        )
        good_job = client.wait(good_job, timeout=600, poll_interval=0.3)
        assert good_job.state == "SUCCEEDED", good_job.error
        r = good_job.promotion_result
        assert r is not None and r.promoted, r
        assert r.new_score >= r.current_score - 0.02
        assert _served(cluster, "gated") == good_job.adapter_version == 3
    assert "if_better evaluation failed" not in cluster.worker.log()
