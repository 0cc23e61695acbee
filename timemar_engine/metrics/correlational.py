"""Correlational score (lag-0 cross-correlation difference), protocol section 2.4.

Per repeat, int(N_real / 5) windows are drawn with replacement from each set (independently).
Each set is standardised per channel with its own mean and unbiased std over (samples, time);
for every channel pair i >= j (diagonal included) the lag-0 product z_i z_j is averaged over
time and samples.  Score = sum_pairs |c_fake - c_real| / 10.  Lower is better.
"""
from __future__ import annotations

import numpy as np

from ._common import validate_pair

__all__ = ["correlational_score", "cross_correlation"]


def cross_correlation(x: np.ndarray) -> np.ndarray:
    """Lag-0 cross-correlation vector of a (n, T, C) set: length C(C+1)/2, pairs in
    ``np.tril_indices(C)`` order.  A constant channel (std 0) is treated as z = 0."""
    x = np.asarray(x, dtype=np.float64)
    n, t, c = x.shape
    flat = x.reshape(-1, c)
    std = flat.std(axis=0, ddof=1) if flat.shape[0] > 1 else np.zeros(c)
    std = np.where(std > 0, std, 1.0)
    z = (flat - flat.mean(axis=0)) / std
    m = (z.T @ z) / flat.shape[0]          # mean over (samples, time) of z_i z_j
    i, j = np.tril_indices(c)
    return m[i, j]


def correlational_score(real: np.ndarray, fake: np.ndarray, *, seed: int, **_ignored) -> float:
    """One repeat of the correlational score (no network; extra keyword arguments such as
    ``device`` or ``progress`` are accepted and ignored so all metrics share a call form)."""
    real, fake = validate_pair(real, fake, min_n=1, metric="correlational_score")
    rng = np.random.default_rng(int(seed))
    size = max(1, int(real.shape[0] / 5))
    ri = rng.integers(0, real.shape[0], size)
    fi = rng.integers(0, fake.shape[0], size)
    return float(np.abs(cross_correlation(fake[fi]) - cross_correlation(real[ri])).sum() / 10.0)
