"""Train's promotion setting: validated field by field (domain/aliases.check_promotion), the
task's default gate metric filled in, and a JobSpec's promotion / init_from / pinned
evaluation rows surviving the store's JSON round trip without changing old fingerprints."""

from __future__ import annotations

import json

import pytest

from tuneserve_server.domain.aliases import PromotionPolicy, PromotionSettings, check_promotion
from tuneserve_server.domain.errors import Violations
from tuneserve_server.domain.jobs import JobSpec, LabelledText


def _check(policy="", metric="", tolerance=None, eval_dataset_id="", task="classification"):
    v = Violations()
    out = check_promotion(policy, metric, tolerance, eval_dataset_id, task, v)
    return out, [item.field for item in v.items]


def test_defaults_and_valid_settings():
    assert _check() == (PromotionSettings(), [])
    assert _check("manual") == (PromotionSettings(PromotionPolicy.MANUAL), [])
    assert _check("if_better") == (PromotionSettings(PromotionPolicy.IF_BETTER, "accuracy", 0.0), [])
    assert _check("if_better", task="causal_lm")[0].metric == "eval_loss"
    got, bad = _check("if_better", "macro_f1", 0.02, "ds-1")
    assert (got.metric, got.tolerance, got.eval_dataset_id, bad) == ("macro_f1", 0.02, "ds-1", [])


@pytest.mark.parametrize(
    "args, field",
    [
        (("sometimes",), "promotion.policy"),
        (("manual", "accuracy"), "promotion.metric"),
        (("always", "", 0.1), "promotion.tolerance"),
        (("manual", "", None, "ds"), "promotion.eval_dataset_id"),
        (("if_better", "eval_loss"), "promotion.metric"),  # not a classification metric
        (("if_better", "accuracy", 1.5), "promotion.tolerance"),
        (("if_better", "accuracy", float("nan")), "promotion.tolerance"),
        (("if_better", "accuracy", -0.1), "promotion.tolerance"),
    ],
)
def test_bad_settings_name_their_field(args, field):
    assert field in _check(*args)[1]


def test_spec_round_trip_and_unchanged_fingerprint_without_the_new_fields(make_spec):
    plain = make_spec()
    assert not {"promotion", "init_from", "promotion_eval"} & set(plain.to_dict())
    rich = JobSpec.from_dict(
        {
            **plain.to_dict(),
            "promotion": PromotionSettings(PromotionPolicy.IF_BETTER, "accuracy", 0.01, "ds").to_dict(),
            "init_from": "intents@3",
            "init_from_requested": "intents@prod",
            "promotion_eval": [["held out", "pos"]],
            "promotion_eval_source": "dataset ds",
        }
    )
    again = JobSpec.from_dict(json.loads(json.dumps(rich.to_dict())))
    assert again == rich
    assert again.promotion.policy is PromotionPolicy.IF_BETTER and again.init_from == "intents@3"
    assert again.promotion_eval == (LabelledText("held out", "pos"),)
