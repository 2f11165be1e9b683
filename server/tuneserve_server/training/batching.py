"""The order in which a recipe visits its training rows each epoch.

Every function draws from the rng it is given and nothing else, so the same seed gives the
same batches, and a resumed job that redraws the skipped epochs sees exactly the batches the
interrupted one would have."""

from __future__ import annotations

import random

# Buckets of this many batches are sorted by length; the batches, not the rows, are shuffled.
BUCKET_BATCHES = 50


def shuffled_batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Rows 0..n-1 shuffled and cut into batches of batch_size (the last may be shorter)."""
    order = list(range(n))
    rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle the rows, cut them into buckets of BUCKET_BATCHES batches, sort each bucket by
    length so each batch holds rows of about one length, then shuffle the batches. Every
    row appears exactly once; the same rng state gives the same batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * BUCKET_BATCHES
    batches: list[list[int]] = []
    for i in range(0, len(order), span):
        bucket = sorted(order[i : i + span], key=lambda j: lengths[j], reverse=True)
        batches += [bucket[k : k + batch_size] for k in range(0, len(bucket), batch_size)]
    rng.shuffle(batches)
    return batches
