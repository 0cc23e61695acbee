"""Memorisation check: are generated windows closer to the training windows than new data is?

A generator that copies its training windows scores perfectly on the four protocol metrics; this
check tells the two apart, with real windows held out of training as the yardstick: a reference
set and a probe set (disjoint, no shared rows). Distances are RMS over the T x C values in [0, 1]
to the nearest window of a set (distance to closest record, DCR).

- near_copies: generated windows within NEAR_COPY_RMS of a training window, beside the same
  fraction for the probe windows (flat, repetitive data has real near-copies). The flag.
- dcr: distance to the closest training window, generated vs probe windows (median, 1% / 5%
  quantiles, and the fraction of generated windows under the probe's 5% quantile: ~5% when they
  sit as far from the training data as new data does). Generated windows that concentrate in
  dense regions (smooth, typical patterns) also come out close here, without copying.
- nndr: each window's distance to the closest training window over its distance to the closest
  reference window. Concentration shrinks both; copying shrinks only the first. Reported as the
  fraction of generated windows under the probe's 5% quantile (~5% for new data) and the medians.
The distances describe; only near-copies flag: none of this is a formal privacy guarantee.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["nearest_distances", "memorization_report"]

QUANTILES = (0.01, 0.05)
NEAR_COPY_RMS = 1e-3  # RMS distance (in [0, 1] units) counted as a copy
COPY_MARGIN = 0.01  # flag when near-copies exceed the probe windows' rate by this much


@torch.no_grad()
def nearest_distances(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """RMS distance (float64) of each query window (n, T, C) to its nearest reference window
    (m, T, C). The nearest one is found by the engine's fused lookup (|r|^2 - 2 q.r in fp32, no
    n x m matrix); its distance is then recomputed exactly in float64."""
    from ..backends import nearest_code

    if query.ndim != 3 or reference.ndim != 3 or query.shape[1:] != reference.shape[1:]:
        raise ValueError(f"query {query.shape} and reference {reference.shape} must be (n, T, C) "
                         "windows of the same T and C")
    if len(reference) == 0:
        raise ValueError("no reference windows")
    q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32).reshape(len(query), -1))
    r = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32).reshape(len(reference), -1))
    idx = nearest_code(q, r, chunk_rows=256).numpy()  # 256 rows per pass over the reference
    diff = query.reshape(len(query), -1).astype(np.float64) - reference.reshape(
        len(reference), -1)[idx].astype(np.float64)
    return np.sqrt((diff * diff).mean(1))


def _subsample(x: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= limit else x[np.sort(rng.choice(len(x), limit, replace=False))]


def _stats(d: np.ndarray) -> dict:
    return {"median": float(np.median(d)),
            **{f"q{round(q * 100):02d}": float(np.quantile(d, q)) for q in QUANTILES}}


def memorization_report(train: np.ndarray, reference: np.ndarray, probe: np.ndarray,
                        fake: np.ndarray, *, max_queries: int = 4096, seed: int = 0,
                        holdout_unseen: bool = True) -> dict:
    """The check (module docstring) of at most max_queries generated and probe windows (drawn
    with seed); all sets (n, T, C) in [0, 1]. Returns near_copies and probe_near_copies; dcr and
    nndr, each {"fake": stats, "probe": stats, "below_probe_q05": fraction} with stats the median
    and 1% / 5% quantiles; suspect (near-copies above the probe rate + COPY_MARGIN); the set
    sizes and holdout_unseen (False when the model trained on the held-out windows too)."""
    if min(len(reference), len(probe), len(fake)) == 0:
        raise ValueError("memorisation check needs reference, probe and generated windows")
    rng = np.random.default_rng(seed)
    queries = {"fake": _subsample(fake, max_queries, rng),
               "probe": _subsample(probe, max_queries, rng)}
    dcr = {k: nearest_distances(q, train) for k, q in queries.items()}
    nndr = {k: dcr[k] / np.maximum(nearest_distances(q, reference), 1e-12)
            for k, q in queries.items()}

    def compare(d: dict) -> dict:
        return {"fake": _stats(d["fake"]), "probe": _stats(d["probe"]),
                "below_probe_q05": float(np.mean(d["fake"] < np.quantile(d["probe"], 0.05)))}

    near = {k: float(np.mean(d < NEAR_COPY_RMS)) for k, d in dcr.items()}
    return {"near_copies": near["fake"], "probe_near_copies": near["probe"],
            "dcr": compare(dcr), "nndr": compare(nndr),
            "suspect": bool(near["fake"] > near["probe"] + COPY_MARGIN),
            "n_train": int(len(train)), "n_reference": int(len(reference)),
            "n_probe": int(len(queries["probe"])), "n_fake": int(len(queries["fake"])),
            "holdout_unseen": bool(holdout_unseen), "seed": int(seed)}
