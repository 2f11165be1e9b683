"""Stratified k-fold assignment for small classification sets (issue #17): which fold holds
each training row out. Pure Python: the API process calls it at submit time (to check that the
data can be cross-validated), the trainer worker again to build the folds (same seed, same
folds).

Rows with the same label and normalised text form one group and always land in the same fold
(a repeated text never leaks from a fold's training rows into its held-out rows, as in the
hold-out split). Each label's groups are shuffled with the seed and dealt to the folds in turn,
the turn carrying on from label to label, so every label is spread over the folds and every fold
gets about the same number of rows. A label with a single group is held out by no fold: it
stays in training everywhere (a `label_not_validated` warning in the data report) rather than
leaving a fold without a training example of it. With 2+ groups a label never loses all its
training rows in a fold: a fold holds at most ceil(groups / k) < groups of them."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from tuneserve_server.domain.jobs import LabelledText
from tuneserve_server.training.data_report import normalise

ALWAYS_TRAIN = -1
MIN_FOLDS, MAX_FOLDS = 2, 10


def _groups(rows: Sequence[LabelledText]) -> dict[str, list[list[int]]]:
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, ex in enumerate(rows):
        by_key.setdefault((ex.label, normalise(ex.text)), []).append(i)
    by_label: dict[str, list[list[int]]] = defaultdict(list)
    for (label, _), members in by_key.items():
        by_label[label].append(members)
    return by_label


def usable_folds(rows: Sequence[LabelledText], folds: int) -> int:
    """How many folds `rows` can be split into: `folds`, or fewer when fewer groups can be held
    out (0 or 1: the rows cannot be cross-validated)."""
    held = sum(len(g) for g in _groups(rows).values() if len(g) > 1)
    return min(folds, held)


def assign_folds(rows: Sequence[LabelledText], folds: int, seed: int) -> list[int]:
    """The fold (0..folds-1) that holds each row out, or ALWAYS_TRAIN; every fold holds out at
    least one row when `usable_folds(rows, folds) == folds`."""
    out = [ALWAYS_TRAIN] * len(rows)
    rng = random.Random(seed)
    turn = 0
    by_label = _groups(rows)
    for label in sorted(by_label):
        groups = by_label[label][:]
        if len(groups) < 2:
            continue
        rng.shuffle(groups)
        for group in groups:
            for i in group:
                out[i] = turn % folds
            turn += 1
    return out
