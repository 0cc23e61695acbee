"""Held-out windows: a split of a series into training and held-out rows that no window crosses.

The rows are cut into up to HOLDOUT_BLOCKS equal parts and the last `fraction` of each part is
held out, so the held-out windows come from the whole time span (a single tail would also measure
drift) and none of them shares a row with a training window. Ready-cut windows (3-D data) are
split the same way by window index. Used by `train --holdout` and by the memorisation check of
`evaluate`, which rebuild the same split from the same data and fraction.
"""
from __future__ import annotations

import numpy as np

from .data import DataError, WindowSet

HOLDOUT_BLOCKS = 10
CHECK_FRACTION = 0.1  # the split `evaluate` uses for a model trained on every window


def split_starts(n: int, span: int, fraction: float,
                 blocks: int = HOLDOUT_BLOCKS) -> tuple[np.ndarray, np.ndarray]:
    """Start rows of the training and held-out windows of n rows, each window spanning `span`
    rows. Fewer blocks are used when a block's held-out part could not hold 2 windows."""
    if not 0 < fraction < 1:
        raise DataError(f"holdout fraction must be in (0, 1), got {fraction}")
    blocks = int(max(1, min(blocks, n * fraction // (2 * span + 1))))
    edges = np.linspace(0, n, blocks + 1).round().astype(np.int64)
    train, held = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        cut = b - int(round((b - a) * fraction))
        train.append(np.arange(a, cut - span + 1))
        held.append(np.arange(cut, b - span + 1))
    train, held = np.concatenate(train), np.concatenate(held)
    if len(train) == 0 or len(held) == 0:
        raise DataError(f"holdout {fraction}: {n} rows with windows of {span} leave "
                        f"{len(train)} training and {len(held)} held-out windows; use more data "
                        "or another fraction")
    return train, held


def split_windows(windows: WindowSet, fraction: float) -> tuple[WindowSet, WindowSet]:
    """(training, held-out) subsets of every window of `windows` (see the module docstring)."""
    if windows.starts is not None:
        raise ValueError("split_windows takes a full window set")
    series = windows.unit.ndim == 2
    train, held = split_starts(len(windows.unit), windows.seq_len if series else 1, fraction)
    return windows.subset(train), windows.subset(held)


def reference_and_probe(held: WindowSet) -> tuple[WindowSet, WindowSet]:
    """The held-out windows in two disjoint halves that share no row: alternate held-out blocks,
    or the two ends of a single block (the memorisation check's reference and probe sets)."""
    starts = held.starts
    span = held.seq_len if held.unit.ndim == 2 else 1
    runs = np.concatenate([[0], np.cumsum(np.diff(starts) > 1)])
    if runs[-1] > 0:
        return held.subset(starts[runs % 2 == 0]), held.subset(starts[runs % 2 == 1])
    half = len(starts) // 2
    first, second = starts[:max(half - span + 1, 0)], starts[half:]
    if len(first) == 0:
        raise DataError(f"{len(starts)} held-out windows cannot be split into two sets that "
                        "share no row")
    return held.subset(first), held.subset(second)
