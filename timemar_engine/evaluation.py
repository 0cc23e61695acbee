"""`timemar-engine evaluate`: score a checkpoint (or any two arrays) with the protocol metrics."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .data import DataError, MinMaxScaler, load_dataset, load_file, prepare

NAMED = ("sines", "stocks", "etth", "energy", "fmri", "mujoco")


def real_windows(data: str, data_dir: str | None, seq_len: int, variable: str | None = None
                 ) -> tuple[np.ndarray, MinMaxScaler]:
    """Real windows in [0, 1] (the protocol's real set) and their scaler."""
    series = (load_dataset(data, data_dir, seq_len=seq_len) if data.lower() in NAMED
              else load_file(data, variable=variable))
    return prepare(series, seq_len)


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


def format_table(result: dict) -> str:
    rows = [f"{'metric':<16}{'mean':>10}{'+-95% CI':>11}   (lower is better)"]
    for name, m in result["metrics"].items():
        ci = "" if m["ci95"] is None else f"{m['ci95']:.3f}"
        rows.append(f"{name:<16}{m['mean']:>10.3f}{ci:>11}")
    rows.append(f"{result['n_real']} real vs {result['n_fake']} generated windows of "
                f"{result['seq_len']} x {result['channels']}, {result['repeats']} repeats")
    return "\n".join(rows)


def write_json(result: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)


def window_stats(windows: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel mean, std and lag-1 autocorrelation of (N, T, C) windows.

    The autocorrelation is pooled: deviations from the channel's overall mean, products of
    consecutive steps averaged over all windows, divided by the overall variance."""
    w = np.asarray(windows, dtype=np.float64)
    mean = w.mean(axis=(0, 1))
    std = w.std(axis=(0, 1))
    d = w - mean
    var = np.where(std > 0, std**2, 1.0)
    lag1 = (d[:, 1:] * d[:, :-1]).mean(axis=(0, 1)) / var
    return {"mean": mean, "std": std, "lag1": lag1}
