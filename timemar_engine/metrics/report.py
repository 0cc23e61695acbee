"""Repeat aggregation and the one-call evaluation of the four protocol metrics (section 2.5)."""
from __future__ import annotations

import math
import time
from typing import Mapping, Sequence

import numpy as np
import scipy.stats

from ._common import validate_pair
from .context_fid import context_fid
from .correlational import correlational_score
from .discriminative import discriminative_runs
from .predictive import predictive_runs

__all__ = ["summarize", "evaluate_arrays", "METRICS"]

METRICS = ("discriminative", "predictive", "context_fid", "correlational")
DEFAULT_ITERATIONS = {"discriminative": 2000, "predictive": 5000, "context_fid": 600}


def summarize(runs: Sequence[float]) -> dict:
    """{"mean", "ci95", "runs"}: ci95 is the 95% Student-t half-width
    t_{0.975, n-1} * std(ddof=1) / sqrt(n) (None when fewer than 2 runs)."""
    vals = [float(v) for v in runs]
    if not vals:
        raise ValueError("summarize: no runs")
    n = len(vals)
    mean = float(np.mean(vals))
    ci = None
    if n >= 2:
        ci = float(scipy.stats.t.ppf(0.975, n - 1) * np.std(vals, ddof=1) / math.sqrt(n))
    return {"mean": mean, "ci95": ci, "runs": vals}


def evaluate_arrays(real, fake, metrics: Sequence[str] = METRICS, repeats: int = 5, seed: int = 0,
                    device="cpu", progress: bool = True,
                    iterations: Mapping[str, int] | None = None) -> dict:
    """Evaluate fake vs real (N, T, C) windows in [0, 1] with the protocol metrics.

    Repeat i of every metric uses seed ``seed + i`` (so it equals e.g.
    ``discriminative_score(real, fake, seed=seed + i)`` up to float rounding: the GRU metrics
    train all repeats together as one stacked network).  ``iterations`` overrides the protocol
    training lengths per metric ({"discriminative": 2000, "predictive": 5000, "context_fid": 600}).
    Returns {"metrics": {name: {"mean", "ci95", "runs"}}, "n_real", "n_fake", "seq_len",
    "channels", "repeats", "seed", "seconds": {name: wall time}}.
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"evaluate_arrays: unknown metric(s) {unknown}; choose from {list(METRICS)}")
    if int(repeats) < 1:
        raise ValueError(f"evaluate_arrays: repeats must be >= 1; got {repeats}")
    iters = dict(DEFAULT_ITERATIONS)
    for k, v in (iterations or {}).items():
        if k not in DEFAULT_ITERATIONS:
            raise ValueError(f"evaluate_arrays: no iteration setting for {k!r}")
        iters[k] = int(v)
    real, fake = validate_pair(real, fake, metric="evaluate_arrays")
    seeds = [int(seed) + i for i in range(int(repeats))]
    out, secs = {}, {}
    for name in metrics:
        t0 = time.perf_counter()
        if name == "discriminative":
            runs = discriminative_runs(real, fake, seeds=seeds, device=device,
                                       iterations=iters[name], progress=progress)
        elif name == "predictive":
            runs = predictive_runs(real, fake, seeds=seeds, device=device,
                                   iterations=iters[name], progress=progress)
        elif name == "context_fid":
            runs = [context_fid(real, fake, seed=s, device=device, iterations=iters[name],
                                progress=progress) for s in seeds]
        else:
            runs = [correlational_score(real, fake, seed=s) for s in seeds]
        secs[name] = time.perf_counter() - t0
        out[name] = summarize(runs)
    return {"metrics": out, "n_real": int(real.shape[0]), "n_fake": int(fake.shape[0]),
            "seq_len": int(real.shape[1]), "channels": int(real.shape[2]),
            "repeats": int(repeats), "seed": int(seed), "seconds": secs}
