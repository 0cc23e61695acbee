"""Loading time series (CSV, .npy, .mat, Parquet, generated Sines), scaling and windowing."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Input data that cannot be used, with a message that says where and why."""


@dataclass
class Series:
    """A table of observations: (L, C) rows x channels, or (N, T, C) ready-cut windows."""

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
                 seq_len: int = 24) -> Series:
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
                               drop=spec.get("drop", ()))
            series.name = key
            return series
    raise DataError(f"dataset {name!r} not found: looked for {', '.join(files)} under {base} "
                    "(set --data-dir or TIMEMAR_DATA_DIR)")


def load_any(data: str, data_dir: str | os.PathLike | None = None, variable: str | None = None,
             nan: str = "error", seq_len: int = 24) -> Series:
    """A named dataset (see NAMED) or, for anything else, a file path."""
    if data.lower() in NAMED:
        return load_dataset(data, data_dir, nan=nan, seq_len=seq_len)
    return load_file(data, variable=variable, nan=nan)


def load_file(path: str | os.PathLike, variable: str | None = None, nan: str = "error",
              drop: tuple[str, ...] = ()) -> Series:
    """Read a CSV / .npy / .mat / Parquet file into a checked float64 Series.

    Table columns named in `drop` are removed silently; other non-numeric ones with a warning."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        values, columns = _read_table(path, "csv", drop)
    elif suffix in (".parquet", ".pq"):
        values, columns = _read_table(path, "parquet", drop)
    elif suffix == ".npy":
        values = np.load(path, allow_pickle=False)
        columns = [f"ch{c}" for c in range(values.shape[-1])] if values.ndim else []
    elif suffix == ".mat":
        values, columns = _read_mat(path, variable)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r} (use .csv, .npy, .mat, .parquet)")
    if not np.issubdtype(values.dtype, np.number):
        raise DataError(f"{path}: array has non-numeric dtype {values.dtype}")
    values = np.asarray(values, dtype=np.float64)
    if values.ndim not in (2, 3):
        raise DataError(f"{path}: expected a 2-D series (time x channels) or 3-D windows "
                        f"(n x time x channels), got shape {values.shape}")
    if values.shape[-1] == 0:
        raise DataError(f"{path}: no numeric columns")
    values = handle_nonfinite(values, columns, nan, str(path))
    return Series(values, columns, path.stem)


def _read_table(path: Path, kind: str, drop: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
    import pandas as pd

    try:
        if kind == "csv":
            df = pd.read_csv(path, skipinitialspace=True)
        else:
            df = pd.read_parquet(path)
    except ImportError as e:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install timemar-engine[parquet])"
                        ) from e
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: ragged or malformed rows: {e}") from e
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: file is empty") from e
    df = df.drop(columns=[c for c in drop if c in df.columns])
    numeric, dropped = [], []
    for col in df.columns:
        if pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col]):
            numeric.append(col)
            continue
        converted = pd.to_numeric(df[col], errors="coerce")
        if converted.notna().sum() == df[col].notna().sum() and len(df) and df[col].notna().any():
            df[col] = converted
            numeric.append(col)
        else:
            dropped.append(str(col))
    if dropped:
        warnings.warn(f"{path}: dropped non-numeric column(s): {', '.join(dropped)}", stacklevel=3)
    if not numeric:
        raise DataError(f"{path}: no numeric columns (found: {', '.join(map(str, df.columns))})")
    return df[numeric].to_numpy(dtype=np.float64), [str(c) for c in numeric]


def _read_mat(path: Path, variable: str | None) -> tuple[np.ndarray, list[str]]:
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as e:  # scipy raises several types for bad files
        raise DataError(f"{path}: not a readable MATLAB file: {e}") from e
    arrays = {k: v for k, v in mat.items() if not k.startswith("__") and getattr(v, "ndim", 0) >= 2
              and v.shape[0] > 1}
    if variable is None:
        if len(arrays) != 1:
            raise DataError(f"{path}: choose a variable with --variable; candidates: "
                            f"{', '.join(sorted(arrays)) or 'none'}")
        variable = next(iter(arrays))
    if variable not in mat:
        raise DataError(f"{path}: no variable {variable!r}; candidates: {', '.join(sorted(arrays))}")
    values = np.asarray(mat[variable])
    return values, [f"{variable}{c}" for c in range(values.shape[-1])]


def handle_nonfinite(values: np.ndarray, columns: list[str], nan: str, where: str) -> np.ndarray:
    """Apply the NaN/inf policy: 'error' (say where), 'drop' rows, or 'ffill' (then back-fill)."""
    if nan not in ("error", "drop", "ffill"):
        raise ValueError(f"nan policy must be error, drop or ffill, got {nan!r}")
    bad = ~np.isfinite(values)
    if not bad.any():
        return values
    if nan == "error" or values.ndim == 3:
        pos = np.argwhere(bad)[0]
        col = columns[pos[-1]] if pos[-1] < len(columns) else str(pos[-1])
        at = f"row {pos[0]}" if values.ndim == 2 else f"window {pos[0]}, step {pos[1]}"
        raise DataError(f"{where}: {int(bad.sum())} NaN/inf value(s); first at {at}, column "
                        f"{col!r} (use --nan drop or --nan ffill for 2-D series)")
    if nan == "drop":
        return values[~bad.any(axis=1)]
    import pandas as pd

    filled = pd.DataFrame(np.where(bad, np.nan, values)).ffill().bfill().to_numpy()
    if np.isnan(filled).any():
        raise DataError(f"{where}: a column has no finite value at all")
    return filled


@dataclass
class MinMaxScaler:
    """Per-channel min-max to [0, 1]; constant channels map to 0 and back exactly."""

    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> "MinMaxScaler":
        flat = values.reshape(-1, values.shape[-1])
        return cls(flat.min(axis=0), flat.max(axis=0))

    @classmethod
    def identity(cls, channels: int) -> "MinMaxScaler":
        return cls(np.zeros(channels), np.ones(channels))

    @property
    def span(self) -> np.ndarray:
        span = self.hi - self.lo
        return np.where(span > 0, span, 1.0)

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        return (x - self.lo) / self.span

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        return u * self.span + self.lo


def make_windows(values: np.ndarray, seq_len: int) -> np.ndarray:
    """All windows of length seq_len with stride 1 (a view, no copy); 3-D input passes through."""
    if values.ndim == 3:
        if values.shape[1] != seq_len:
            raise DataError(f"data holds windows of length {values.shape[1]}, not {seq_len}")
        return values
    if len(values) < seq_len:
        raise DataError(f"too few rows: {len(values)} rows cannot make one window of length "
                        f"{seq_len}")
    win = np.lib.stride_tricks.sliding_window_view(values, seq_len, axis=0)
    return win.transpose(0, 2, 1)


class WindowSet:
    """All stride-1 windows of a series, gathered per batch by index: the series is scaled once
    to [0, 1] in float32 and never cut into a (N, T, C) copy (3-D input is kept as given)."""

    def __init__(self, unit: np.ndarray, seq_len: int):
        if unit.ndim == 3 and unit.shape[1] != seq_len:
            raise DataError(f"data holds windows of length {unit.shape[1]}, not {seq_len}")
        if unit.ndim == 2 and len(unit) < seq_len:
            raise DataError(f"too few rows: {len(unit)} rows cannot make one window of length "
                            f"{seq_len}")
        self.unit, self.seq_len = unit, seq_len
        self._offsets = np.arange(seq_len)

    @classmethod
    def from_series(cls, series: Series, seq_len: int, scaler: "MinMaxScaler") -> "WindowSet":
        return cls(scaler.to_unit(series.values).astype(np.float32, copy=False), seq_len)

    def __len__(self) -> int:
        return len(self.unit) if self.unit.ndim == 3 else len(self.unit) - self.seq_len + 1

    @property
    def channels(self) -> int:
        return self.unit.shape[-1]

    def gather(self, idx) -> np.ndarray:
        """Windows idx (b,) as a float32 (b, T, C) array in [0, 1]."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.unit.ndim == 3:
            return np.ascontiguousarray(self.unit[idx])
        return self.unit[idx[:, None] + self._offsets]

    def chunks(self, batch: int = 1024):
        """(start, windows) in index order, batch windows at a time."""
        for i in range(0, len(self), batch):
            yield i, self.gather(np.arange(i, min(i + batch, len(self))))


def prepare(series: Series, seq_len: int) -> tuple[np.ndarray, MinMaxScaler]:
    """Windows in [0, 1] (float32) and the scaler fitted on the whole series."""
    scaler = (MinMaxScaler.identity(series.channels) if series.unit_scaled
              else MinMaxScaler.fit(series.values))
    windows = make_windows(series.values, seq_len)
    return scaler.to_unit(windows).astype(np.float32), scaler
