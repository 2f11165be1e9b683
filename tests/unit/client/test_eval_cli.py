"""`tuneserve eval`'s text and pictures from an Evaluation as the client parses it: the
metrics and per-label tables, the comparison with its p-values and verdict, the PNGs, and the
message when matplotlib is missing."""

from __future__ import annotations

import argparse
import sys

from tuneserve_client import eval_cli
from tuneserve_client.cli import build_parser
from tuneserve_client.evaluations import (
    BootstrapInterval,
    Comparison,
    Evaluation,
    LabelScore,
    McNemar,
    ReliabilityBin,
    TargetResult,
)


def _result(target: str, acc: float) -> TargetResult:
    return TargetResult(
        target=target,
        metrics={"rows": 10.0, "accuracy": acc, "macro_f1": acc - 0.05, "nll": 0.5, "ece": 0.04},
        per_label=(LabelScore("a", 0.9, 0.8, 0.85, 6), LabelScore("b", 0.7, 0.75, 0.72, 4)),
        labels=("a", "b"),
        confusion=((5, 1), (1, 3)),
        reliability=(ReliabilityBin(0.5, 0.6, 3, 0.66, 0.55), ReliabilityBin(0.9, 1.0, 7, 0.85, 0.95)),
    )


EV = Evaluation(
    id="eval-1",
    namespace="default",
    task="classification",
    state="SUCCEEDED",
    targets=("x@1", "x@2"),
    requested=("x@1", "x"),
    rows=10,
    results=(_result("x@1", 0.6), _result("x@2", 0.8)),
    comparisons=(
        Comparison(
            "x@1",
            "x@2",
            10,
            McNemar("accuracy", 0.6, 0.8, 0.2, 0, 6, 0.0, 0.03125, "exact binomial"),
            (BootstrapInterval("macro_f1", 0.55, 0.75, 0.2, 0.05, 0.35, 0.95, 0.01, 1000, 0),),
        ),
    ),
    seconds=1.5,
    rows_per_second=13.3,
)


def test_describe_prints_the_tables_and_the_verdict():
    text = eval_cli.describe(EV)
    assert "TARGET" in text and "x@2" in text and "0.8000" in text
    assert "per label:" in text and "x@1 P" in text
    assert "comparison: x@2 vs x@1 on the same 10 rows" in text
    assert "0.0312" in text and "exact binomial" in text and "[+0.0500, +0.3500]" in text
    assert "=> x@2 is better than x@1 on accuracy (McNemar p = 0.0312 < 0.05)" in text


def test_the_pngs_are_written(tmp_path):
    eval_cli.write_confusion_png(list(EV.results), str(tmp_path / "c.png"))
    eval_cli.write_reliability_png(list(EV.results), str(tmp_path / "r.png"))
    for name in ("c.png", "r.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_a_missing_matplotlib_is_a_clear_usage_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    args = argparse.Namespace(confusion_png="c.png", reliability_png=None)
    assert eval_cli._check_plotting(args) is False
    assert "pip install 'tuneserve[plots]'" in capsys.readouterr().err


def test_the_parser_knows_the_eval_commands():
    args = build_parser().parse_args(["eval", "compare", "a@1", "a@2", "--dataset", "ds-1", "--seed", "5"])
    assert (args.a, args.b, args.dataset, args.seed, args.wait) == ("a@1", "a@2", "ds-1", 5, True)
    args = build_parser().parse_args(["eval", "create", "a", "b@3", "--data", "t.csv", "--wait"])
    assert args.versions == ["a", "b@3"] and args.wait
