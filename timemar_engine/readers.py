"""Reading one data file (CSV, Parquet, .npy, .mat) into values and column names, with errors
that say where and why; `data.load_file` checks and wraps the result."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Input data that cannot be used, with a message that says where and why."""


def read_values(path: Path, variable: str | None, drop: tuple[str, ...], header: bool,
                non_numeric: str) -> tuple[np.ndarray, list[str]]:
    """The file's values (.npy: as stored, possibly a memmap) and column names, by its suffix."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        return _read_table(path, "csv", drop, header, non_numeric)
    if suffix in (".parquet", ".pq"):
        return _read_table(path, "parquet", drop, True, non_numeric)
    if suffix == ".npy":
        values = _read_npy(path)
        return values, [f"ch{c}" for c in range(values.shape[-1])] if values.ndim else []
    if suffix == ".mat":
        return _read_mat(path, variable)
    raise DataError(f"{path}: unsupported file type {suffix!r} (use .csv, .npy, .mat, .parquet)")


def _read_npy(path: Path) -> np.ndarray:
    try:
        values = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # numpy raises several types for bad headers and truncated files
        raise DataError(f"{path}: not a readable .npy array: {e}") from e
    if values.dtype.kind == "f" and values.itemsize in (4, 8):
        return values
    return np.array(values, dtype=np.float64) if values.dtype.kind in "iuf" else values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_table(path: Path, kind: str, drop: tuple[str, ...], header: bool, non_numeric: str
                ) -> tuple[np.ndarray, list[str]]:
    import pandas as pd

    if kind == "csv" and header:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
            first = [f.strip() for f in next(csv.reader(fh, skipinitialspace=True), [])]
        if any(first) and all(_is_number(f) for f in first if f):
            raise DataError(f"{path}: the first row looks like data, not a header (every field "
                            f"is a number: {', '.join(first[:4])}{', ...' if len(first) > 4 else ''}"
                            "); if the file has no header row, pass --no-header (header=False)")
    try:
        if kind == "csv":
            df = pd.read_csv(path, skipinitialspace=True, header=0 if header else None)
        else:
            df = pd.read_parquet(path)
    except ImportError as e:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install timemar-engine[parquet])"
                        ) from e
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: ragged or malformed rows: {e}") from e
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: file is empty") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason}); save it as a UTF-8 CSV") from e
    if not header:
        df.columns = [f"col{i}" for i in range(df.shape[1])]
    df = df.drop(columns=[c for c in drop if c in df.columns])
    numeric, textual, mixed = [], [], []  # mixed: (first bad row, column, bad count, text)
    for col in df.columns:
        s = df[col]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            numeric.append(col)
            continue
        converted = pd.to_numeric(s, errors="coerce")
        bad = (s.notna() & converted.isna()).to_numpy()
        n_bad = int(bad.sum())
        if n_bad == 0:
            df[col] = converted
            numeric.append(col)
        elif n_bad == int(s.notna().sum()):
            textual.append(str(col))
        else:
            row = int(np.flatnonzero(bad)[0])
            mixed.append((row, str(col), n_bad, str(s.iloc[row])))
    if textual:
        warnings.warn(f"{path}: dropped non-numeric column(s): {', '.join(textual)}", stacklevel=4)
    if mixed:
        below = " below the header" if kind == "csv" and header else ""
        cells = [f"{c!r} ({n} cell(s), first {t[:40]!r} at data row {r + 1})"
                 for r, c, n, t in mixed]
        if non_numeric == "drop":
            warnings.warn(f"{path}: dropped column(s) with non-numeric cells: {'; '.join(cells)}",
                          stacklevel=4)
        else:
            row, col, _, text = min(mixed, key=lambda m: m[0])  # ties: the leftmost column
            hint = (" The first row looks like a header: remove --no-header."
                    if not header and all(r == 0 and k == 1 for r, _, k, _ in mixed) else "")
            raise DataError(
                f"{path}: non-numeric cell {text[:40]!r} at data row {row + 1} (counting from 1"
                f"{below}), column {col!r}; {sum(m[2] for m in mixed)} non-numeric cell(s) in "
                f"otherwise numeric column(s): {'; '.join(cells)}. Fix or empty those cells "
                f"(empty cells follow --nan), or pass --non-numeric drop to drop such columns."
                + hint)
    if not numeric:
        raise DataError(f"{path}: no numeric columns (found: {', '.join(map(str, df.columns))})")
    values = df[numeric].to_numpy(dtype=np.float64)
    return values, [str(c) for c in numeric]


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
