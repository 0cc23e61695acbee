"""Loading time series (CSV, .npy, .mat, Parquet, generated Sines), scaling and windowing."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .readers import DataError, read_values


@dataclass
class Series:
    """A table of observations: (L, C) rows x channels, or (N, T, C) ready-cut windows.

    values is float64, or float32/float64 read-only np.memmap for .npy input."""

    values: np.ndarray
    columns: list[str]
    name: str = ""
    unit_scaled: bool = False  # already in [0, 1] (e.g. Sines): the scaler is the identity

    @property
    def channels(self) -> int:
        return self.values.shape[-1]


# file name (relative to the data dir) and options of each named benchmark dataset
DATASETS: dict[str, dict] = {
    "stocks": dict(file="stock_data.csv"),
    "etth": dict(file="ETTh.csv", drop=("date",)),
    "energy": dict(file=("energy_data.csv", "energydata_complete.csv"), drop=("date",)),
    "fmri": dict(file="fMRI/sim4.mat", variable="ts"),
    "mujoco": dict(file="mujoco/mujoco_hopper_10000x24x14.npy"),
}


NAMED = ("sines", *DATASETS)


def default_data_dir() -> Path:
    return Path(os.environ.get("TIMEMAR_DATA_DIR", "../shared/datasets"))


def sines(n: int = 10000, seq_len: int = 24, channels: int = 5, seed: int = 123) -> Series:
    """The TimeGAN Sines benchmark: sin(f t + p), f, p ~ U(0, 0.1), mapped to [0, 1].

    Draw order (sample, channel, then freq and phase) follows the protocol, so seed 123 gives the
    benchmark array."""
    rng = np.random.RandomState(seed)
    out = np.empty((n, seq_len, channels))
    t = np.arange(seq_len)
    for i in range(n):
        for c in range(channels):
            freq = rng.uniform(0, 0.1)
            phase = rng.uniform(0, 0.1)
            out[i, :, c] = np.sin(freq * t + phase)
    return Series((out + 1) / 2, [f"sine_{c}" for c in range(channels)], "sines", unit_scaled=True)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, nan: str = "error",
                 seq_len: int = 24, *, non_numeric: str = "error") -> Series:
    """A named benchmark dataset (`sines` is generated; the others are read under data_dir)."""
    key = name.lower()
    if key == "sines":
        return sines(seq_len=seq_len)
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: sines, {', '.join(DATASETS)}, "
                        "or pass a file path")
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    spec = DATASETS[key]
    files = spec["file"] if isinstance(spec["file"], tuple) else (spec["file"],)
    for f in files:
        if (base / f).exists():
            series = load_file(base / f, variable=spec.get("variable"), nan=nan,
                               drop=spec.get("drop", ()), non_numeric=non_numeric)
            series.name = key
            return series
    raise DataError(f"dataset {name!r} not found: looked for {', '.join(files)} under {base} "
                    "(set --data-dir or TIMEMAR_DATA_DIR)")


def load_any(data: str, data_dir: str | os.PathLike | None = None, variable: str | None = None,
             nan: str = "error", seq_len: int = 24, *, header: bool = True,
             non_numeric: str = "error") -> Series:
    """A named dataset (see NAMED) or, for anything else, a file path (see `load_file`)."""
    if data.lower() in NAMED:
        if not header:
            raise DataError(f"{data} is a named dataset with a known layout; --no-header "
                            "(header=False) is for CSV files without a header row")
        return load_dataset(data, data_dir, nan=nan, seq_len=seq_len, non_numeric=non_numeric)
    return load_file(data, variable=variable, nan=nan, header=header, non_numeric=non_numeric)


def load_file(path: str | os.PathLike, variable: str | None = None, nan: str = "error",
              drop: tuple[str, ...] = (), *, header: bool = True,
              non_numeric: str = "error") -> Series:
    """Read a CSV / .npy / .mat / Parquet file into a checked Series (NaN/inf: `nan` policy).

    .npy float32/float64 arrays are memory-mapped read-only (no copy; larger than RAM works);
    everything else becomes float64. Tables: `drop` columns go silently; a column with no
    numeric cell (dates, names) is dropped with a warning; a column with numbers and some
    non-numeric cells is a DataError naming the first bad cell (data row counted from 1, header
    not counted), its column, text and the count, or with non_numeric="drop" is dropped with a
    warning. Empty cells are missing values (the `nan` policy). CSV: with header=True a first
    row of numbers only is a DataError (it would be lost as a header); header=False reads
    every row as data, columns col0, col1, ... (other file types ignore `header`)."""
    if non_numeric not in ("error", "drop"):
        raise ValueError(f"non_numeric policy must be error or drop, got {non_numeric!r}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a data file")
    values, columns = read_values(path, variable, drop, header, non_numeric)
    if values.dtype.kind not in "iuf":
        raise DataError(f"{path}: array has non-numeric dtype {values.dtype}")
    if path.suffix.lower() != ".npy":
        values = np.asarray(values, dtype=np.float64)
    if values.ndim not in (2, 3):
        raise DataError(f"{path}: expected a 2-D series (time x channels) or 3-D windows "
                        f"(n x time x channels), got shape {values.shape}")
    if values.shape[-1] == 0:
        raise DataError(f"{path}: no numeric columns")
    values = handle_nonfinite(values, columns, nan, str(path))
    return Series(values, columns, path.stem)


CHUNK = 1 << 22  # elements per step of the chunk-wise passes (32 MiB as float64)


def row_chunks(values: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(start, values[start:start + k]) along axis 0, about CHUNK elements at a time (views)."""
    step = max(1, CHUNK // max(1, math.prod(values.shape[1:])))
    for i in range(0, len(values), step):
        yield i, values[i:i + step]


def handle_nonfinite(values: np.ndarray, columns: list[str], nan: str, where: str) -> np.ndarray:
    """Apply the NaN/inf policy: 'error' (say where), 'drop' rows, or 'ffill' (then back-fill).

    Checked chunk-wise, so a memory-mapped input is not copied when it is all finite."""
    if nan not in ("error", "drop", "ffill"):
        raise ValueError(f"nan policy must be error, drop or ffill, got {nan!r}")
    if values.dtype.kind != "f":
        return values
    bad_rows, count, first = np.zeros(len(values), dtype=bool), 0, None
    for i, chunk in row_chunks(values):
        bad = ~np.isfinite(chunk)
        if bad.any():
            count += int(bad.sum())
            if first is None:
                first = np.argwhere(bad)[0]
                first[0] += i
            bad_rows[i:i + len(chunk)] = bad.reshape(len(chunk), -1).any(axis=1)
    if not count:
        return values
    if nan == "error" or values.ndim == 3:
        col = columns[first[-1]] if first[-1] < len(columns) else str(first[-1])
        at = f"row {first[0]}" if values.ndim == 2 else f"window {first[0]}, step {first[1]}"
        raise DataError(f"{where}: {count} NaN/inf value(s); first at {at}, column {col!r} "
                        f"(rows count from 0, after any header; use --nan drop or --nan ffill "
                        f"for 2-D series)")
    if nan == "drop":
        return np.asarray(values[~bad_rows])  # a plain array, not a memmap subclass
    import pandas as pd

    filled = np.array(values)
    filled[~np.isfinite(filled)] = np.nan
    filled = pd.DataFrame(filled).ffill().bfill().to_numpy()
    if np.isnan(filled).any():
        raise DataError(f"{where}: a column has no finite value at all")
    return filled


@dataclass
class MinMaxScaler:
    """Per-channel min-max to [0, 1]. A constant channel (lo == hi) maps to 0, and any unit
    value maps back to exactly lo, so it round-trips bit for bit."""

    lo: np.ndarray
    hi: np.ndarray

    def __post_init__(self):
        self.lo = np.asarray(self.lo, dtype=np.float64)
        self.hi = np.asarray(self.hi, dtype=np.float64)

    @classmethod
    def fit(cls, values: np.ndarray) -> "MinMaxScaler":
        """Per-channel (last axis) min and max, computed chunk-wise (no copy of values)."""
        if values.size == 0:
            raise DataError("cannot fit a scaler on an empty series")
        lo = np.full(values.shape[-1], np.inf)
        hi = np.full(values.shape[-1], -np.inf)
        for _, chunk in row_chunks(values):
            axes = tuple(range(chunk.ndim - 1))
            np.minimum(lo, chunk.min(axis=axes), out=lo)
            np.maximum(hi, chunk.max(axis=axes), out=hi)
        return cls(lo, hi)

    @classmethod
    def identity(cls, channels: int) -> "MinMaxScaler":
        return cls(np.zeros(channels), np.ones(channels))

    @classmethod
    def for_series(cls, series: Series) -> "MinMaxScaler":
        """The identity for unit-scaled series (Sines), else fitted on the whole series."""
        return cls.identity(series.channels) if series.unit_scaled else cls.fit(series.values)

    @property
    def span(self) -> np.ndarray:
        span = self.hi - self.lo
        return np.where(span > 0, span, 1.0)

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        return (x - self.lo) / self.span

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        span = self.hi - self.lo
        return np.where(span > 0, u * span + self.lo, self.lo)


def _check_windows(values: np.ndarray, seq_len: int) -> None:
    if values.ndim == 3 and values.shape[1] != seq_len:
        raise DataError(f"data holds windows of length {values.shape[1]}, not {seq_len}")
    if values.ndim == 2 and len(values) < seq_len:
        raise DataError(f"too few rows: {len(values)} rows cannot make one window of length "
                        f"{seq_len}")


def make_windows(values: np.ndarray, seq_len: int) -> np.ndarray:
    """All windows of length seq_len with stride 1 (a view, no copy); 3-D input passes through."""
    _check_windows(values, seq_len)
    if values.ndim == 3:
        return values
    win = np.lib.stride_tricks.sliding_window_view(values, seq_len, axis=0)
    return win.transpose(0, 2, 1)


def scale_to_unit(values: np.ndarray, scaler: MinMaxScaler) -> np.ndarray:
    """`scaler.to_unit(values)` as one float32 array, computed chunk-wise in float64 (so each
    value is bit-identical to `scaler.to_unit(values).astype(np.float32)`)."""
    out = np.empty(values.shape, dtype=np.float32)
    for i, chunk in row_chunks(values):
        out[i:i + len(chunk)] = scaler.to_unit(chunk)
    return out


class WindowSet:
    """All stride-1 windows of a series, gathered per batch by index: the series is scaled once
    to [0, 1] in float32 and never cut into a (N, T, C) copy (3-D input is kept as given)."""

    def __init__(self, unit: np.ndarray, seq_len: int, starts: np.ndarray | None = None):
        """unit: the [0, 1] series (L, C) or windows (N, T, C), float32 (cast if not); starts:
        the start rows (window indices, for 3-D unit) of the windows this set holds (default all)."""
        _check_windows(unit, seq_len)
        self.unit, self.seq_len = np.asarray(unit, dtype=np.float32), seq_len
        self._offsets = np.arange(seq_len)
        self.starts = None if starts is None else np.asarray(starts, dtype=np.int64)

    @classmethod
    def from_series(cls, series: Series, seq_len: int, scaler: MinMaxScaler) -> "WindowSet":
        """Scale the series once (`scale_to_unit`): memory = the series in float32."""
        _check_windows(series.values, seq_len)
        return cls(scale_to_unit(series.values, scaler), seq_len)

    def __len__(self) -> int:
        if self.starts is not None:
            return len(self.starts)
        return len(self.unit) if self.unit.ndim == 3 else len(self.unit) - self.seq_len + 1

    def subset(self, starts: np.ndarray) -> "WindowSet":
        """The windows starting at `starts` (rows of this set's series), sharing its memory."""
        return WindowSet(self.unit, self.seq_len, starts)

    @property
    def channels(self) -> int:
        return self.unit.shape[-1]

    def gather(self, idx) -> np.ndarray:
        """Windows idx (b,) as a float32 (b, T, C) array in [0, 1]."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"window index out of range [0, {len(self)})")
        if self.starts is not None:
            idx = self.starts[idx]
        if self.unit.ndim == 3:
            return self.unit[idx]
        return self.unit[idx[:, None] + self._offsets]

    def chunks(self, batch: int = 1024) -> Iterator[tuple[int, np.ndarray]]:
        """(start, windows[start:start + batch]) in index order, as float32 (b, T, C) copies."""
        view = make_windows(self.unit, self.seq_len)
        for i in range(0, len(self), batch):
            part = slice(i, i + batch) if self.starts is None else self.starts[i:i + batch]
            yield i, np.array(view[part], order="C")

    def array(self, dtype=np.float32) -> np.ndarray:
        """All windows as one C-contiguous (N, T, C) array of dtype (one copy; for the metrics,
        which take full arrays)."""
        view = make_windows(self.unit, self.seq_len)
        return np.array(view if self.starts is None else view[self.starts], dtype=dtype, order="C")


def prepare(series: Series, seq_len: int) -> tuple[np.ndarray, MinMaxScaler]:
    """All windows in [0, 1] as one float32 (N, T, C) array, and the scaler fitted on the whole
    series (`MinMaxScaler.for_series`). Training uses `WindowSet` instead, which never builds
    this array."""
    scaler = MinMaxScaler.for_series(series)
    return WindowSet.from_series(series, seq_len, scaler).array(), scaler
