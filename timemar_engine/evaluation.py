"""`timemar-engine evaluate`: score a checkpoint (or any two arrays) with the protocol metrics."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from .data import DataError, MinMaxScaler, Series, WindowSet, load_any
from .metrics.report import METRICS, evaluate_arrays

if TYPE_CHECKING:
    import torch

    from .engine import Engine


def real_windows(data: str, data_dir: str | Path | None, seq_len: int, variable: str | None = None,
                 *, nan: str = "error", header: bool = True, non_numeric: str = "error"
                 ) -> tuple[np.ndarray, MinMaxScaler]:
    """Real windows in [0, 1] (the protocol's real set) as one float64 (n, T, C) array, and their
    scaler. nan, header and non_numeric are the loader's policies (`data.load_file`)."""
    series = load_any(data, data_dir, variable, nan, seq_len, header=header,
                      non_numeric=non_numeric)
    return _unit_windows(series, seq_len)


MAX_REAL_WINDOWS = 100_000  # more than every benchmark dataset holds


def _unit_windows(series: Series, seq_len: int) -> tuple[np.ndarray, MinMaxScaler]:
    """The series scaled once to float32, then its windows in one float64 copy (`capped_array`)."""
    scaler = MinMaxScaler.for_series(series)
    return capped_array(WindowSet.from_series(series, seq_len, scaler)), scaler


def capped_array(windows: WindowSet, dtype=np.float64) -> np.ndarray:
    """The windows in one copy of dtype (the metrics take full float64 arrays): all of them, or
    MAX_REAL_WINDOWS evenly spaced ones of a longer series, so memory stays bounded however long
    the table is."""
    if len(windows) <= MAX_REAL_WINDOWS:
        return windows.array(dtype)
    idx = np.linspace(0, len(windows) - 1, MAX_REAL_WINDOWS).round().astype(np.int64)
    return windows.gather(idx).astype(dtype, copy=False)


def memorization_check(windows: WindowSet, fake: np.ndarray, meta: Mapping, seed: int = 0) -> dict:
    """`metrics.memorization.memorization_report` of fake [0, 1] windows against the real
    `windows` split as the checkpoint's `train --holdout` split them (held-out windows unseen in
    training), or, for a model trained on every window, with `holdout.CHECK_FRACTION` (the held-out
    windows were then seen: they only show how close distinct real windows are)."""
    from .holdout import CHECK_FRACTION, reference_and_probe, split_windows
    from .metrics.memorization import memorization_report

    stored = meta.get("holdout") or {}
    fraction = stored.get("fraction") or CHECK_FRACTION
    try:
        train, held = split_windows(windows, fraction)
        reference, probe = reference_and_probe(held)
    except DataError as e:  # too little data for a held-out part: say so, score the rest
        return {"skipped": str(e)}
    unseen = bool(stored) and stored.get("train_windows") == len(train)
    sets = (capped_array(w, np.float32) for w in (train, reference, probe))  # the lookup's dtype
    report = memorization_report(*sets, fake, seed=seed, holdout_unseen=unseen)
    return {**report, "holdout_fraction": fraction}


def load_windows(path: str | Path) -> np.ndarray:
    a = np.load(path, mmap_mode="r", allow_pickle=False)
    if a.ndim != 3:
        raise DataError(f"{path}: expected (n, T, C) windows, got shape {a.shape}")
    return np.asarray(a, dtype=np.float64)


def scale_pair(real: np.ndarray, fake: np.ndarray, assume_unit: bool) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays in [0, 1] by the real array's per-channel range (or as given, if unit)."""
    if real.shape[1:] != fake.shape[1:]:
        raise DataError(f"real windows {real.shape[1:]} and fake windows {fake.shape[1:]} differ "
                        "in (T, C)")
    if assume_unit:
        return real, fake
    sc = MinMaxScaler.fit(real)
    return sc.to_unit(real), sc.to_unit(fake)


def score_windows(real: np.ndarray, fake: np.ndarray, *, metrics: Sequence[str] = METRICS,
                  repeats: int = 5, seed: int = 0, device: "str | torch.device" = "cpu",
                  iterations: Mapping[str, int] | None = None, plot: str | Path | None = None,
                  progress: bool = True) -> dict:
    """`evaluate_arrays` on [0, 1] windows, plus the device and, with `plot`, the plot paths."""
    if plot and not all(importlib.util.find_spec(m) for m in ("matplotlib", "sklearn")):
        raise DataError("--plot needs matplotlib and scikit-learn: pip install timemar-engine[eval]")
    result = evaluate_arrays(real, fake, metrics=metrics, repeats=repeats, seed=seed,
                             device=device, progress=progress, iterations=iterations)
    result["device"] = str(device)
    if plot:
        from .plots import plot_evaluation

        result["plots"] = [str(p) for p in plot_evaluation(real, fake, plot, seed=seed)]
    return result


def evaluate_checkpoint(engine: "Engine", data: str, data_dir: str | Path | None = None, *,
                        n: int | None = None, batch_size: int | None = None,
                        variable: str | None = None, metrics: Sequence[str] = METRICS,
                        repeats: int = 5, seed: int = 0, device: "str | torch.device | None" = None,
                        iterations: Mapping[str, int] | None = None,
                        plot: str | Path | None = None, progress: bool = True,
                        nan: str = "error", header: bool = True,
                        non_numeric: str = "error", memorization: bool = True,
                        reconstruct: bool = False, temperature: float = 1.0,
                        top_k: int | None = None, top_p: float | None = None) -> dict:
    """Sample n windows (default: as many as the real set) and score them against `data`.

    Real = all windows of `data` in [0, 1] (`real_windows`, read with the nan, header and
    non_numeric policies); fake = the samples (drawn with temperature, top_k, top_p) in data
    units mapped to [0, 1] by the same real scaler, or with `reconstruct` the real windows encoded
    to tokens and decoded (the VQ-VAE's ceiling; n, the filters and the memorisation check do not
    apply). Sampling and the metrics use `seed`; the metrics run on `device` (default: the
    engine's). Returns `score_windows`' dict plus dataset, ckpt, what was scored ("samples" or
    "reconstructions"), sample_seconds and, with `memorization`, the memorisation check
    (`memorization_check`)."""
    series = load_any(data, data_dir, variable, nan, engine.seq_len, header=header,
                      non_numeric=non_numeric)
    if series.channels != len(engine.channels):
        raise DataError(f"{data} has {series.channels} channels, the model "
                        f"{len(engine.channels)}")
    scaler = MinMaxScaler.for_series(series)
    windows = WindowSet.from_series(series, engine.seq_len, scaler)
    del series  # the raw table is not needed while sampling and scoring
    real = capped_array(windows)
    t0 = time.perf_counter()
    if reconstruct:
        fake = engine.decode(engine.encode(real, scale="unit"), scale="unit").astype(np.float64)
    else:
        fake = engine.sample(n or len(real), batch_size=batch_size, seed=seed,
                             temperature=temperature, top_k=top_k, top_p=top_p, progress=progress)
        fake = scaler.to_unit(fake.astype(np.float64))
    seconds = time.perf_counter() - t0
    result = score_windows(real, fake, metrics=metrics, repeats=repeats, seed=seed,
                           device=engine.device if device is None else device,
                           iterations=iterations, plot=plot, progress=progress)
    if memorization and not reconstruct:
        result["memorization"] = memorization_check(windows, fake, engine.meta, seed)
    result.update(dataset=data, ckpt=str(engine.path), sample_seconds=seconds,
                  scored="reconstructions" if reconstruct else "samples")
    if not reconstruct:
        result["sampling"] = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    return result


def format_table(result: dict) -> str:
    rows = [f"{'metric':<16}{'mean':>10}{'+-95% CI':>11}   (lower is better)"]
    for name, m in result["metrics"].items():
        ci = "" if m["ci95"] is None else f"{m['ci95']:.3f}"
        rows.append(f"{name:<16}{m['mean']:>10.3f}{ci:>11}")
    what = ("reconstructed (encoded and decoded) real" if result.get("scored") == "reconstructions"
            else "generated")
    rows.append(f"{result['n_real']} real vs {result['n_fake']} {what} windows of "
                f"{result['seq_len']} x {result['channels']}, {result['repeats']} repeats")
    if "memorization" in result:
        rows.append(memorization_line(result["memorization"]))
    return "\n".join(rows)


def memorization_line(m: dict) -> str:
    """One line on the memorisation check (`memorization_check`)."""
    if "skipped" in m:
        return f"memorisation: not checked: {m['skipped']}"
    held = "held out of training" if m["holdout_unseen"] else (
        "seen in training too (train with --holdout for windows it never saw)")
    return (f"memorisation: {'SUSPECT: ' if m['suspect'] else ''}near-copies "
            f"{100 * m['near_copies']:.2f}% of generated windows (real windows "
            f"{100 * m['probe_near_copies']:.2f}%); under the 5% quantile of real windows {held}: "
            f"{100 * m['dcr']['below_probe_q05']:.1f}% by distance to the closest training window, "
            f"{100 * m['nndr']['below_probe_q05']:.1f}% by its ratio to the distance to other "
            "real windows (~5% each for new data)")


def write_json(result: dict, path: str | Path, overwrite: bool = False) -> None:
    """Write result as indented JSON, atomically; an existing path needs overwrite=True."""
    from .safe_io import atomic_output

    text = json.dumps(result, indent=2)
    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(text)


def window_stats(windows: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel mean, std and lag-1 autocorrelation of (N, T, C) windows.

    The autocorrelation is the Pearson correlation of all (x_t, x_{t+1}) pairs inside windows."""
    w = np.asarray(windows, dtype=np.float64)
    a = w[:, :-1].reshape(-1, w.shape[2])
    b = w[:, 1:].reshape(-1, w.shape[2])
    a, b = a - a.mean(0), b - b.mean(0)
    denom = np.sqrt((a * a).mean(0) * (b * b).mean(0))
    lag1 = np.where(denom > 0, (a * b).mean(0) / np.where(denom > 0, denom, 1), 0.0)
    return {"mean": w.mean(axis=(0, 1)), "std": w.std(axis=(0, 1)), "lag1": lag1}
