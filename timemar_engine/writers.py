"""Streaming, atomic writers for sampled windows: .npy, CSV and Parquet."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .safe_io import OutputError, atomic_output, check_writable

FORMATS = ("npy", "csv", "parquet")
INDEX_COLUMNS = ("window", "step")


def guess_format(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    return {"pq": "parquet"}.get(ext, ext if ext in FORMATS else "npy")


def _long_table(chunk: np.ndarray, first: int, channels: list[str]):
    """(b, T, C) -> a long DataFrame with columns window, step, <channels>."""
    import pandas as pd

    b, T, C = chunk.shape
    df = pd.DataFrame(chunk.reshape(b * T, C), columns=channels)
    df.insert(0, "step", np.tile(np.arange(T, dtype=np.int32), b))
    df.insert(0, "window", np.repeat(np.arange(first, first + b, dtype=np.int64), T))
    return df


def write_npy_chunks(path: str, shape: tuple[int, int, int], chunks: Iterable[np.ndarray]) -> int:
    """Write a float32 .npy of `shape` chunk by chunk, each through its own short-lived memory
    map, so resident memory stays at one chunk however large the file. Returns windows written."""
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    offset, row = header.offset, int(np.prod(shape[1:])) * 4
    del header
    done = 0
    for chunk in chunks:
        view = np.memmap(path, dtype=np.float32, mode="r+", offset=offset + done * row,
                         shape=chunk.shape)
        view[:] = chunk
        view.flush()
        del view
        done += len(chunk)
    return done


def check_output(path: Path, fmt: str, channels: list[str], overwrite: bool) -> None:
    """Every reason `write_chunks` could fail to write, raised before any sampling is done."""
    check_format(fmt, channels)
    check_writable(path, overwrite)


def check_format(fmt: str, channels: list[str]) -> None:
    """The format, the channel names as table columns, and the format's dependencies."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt != "npy":
        dupes = list(dict.fromkeys(str(c) for c in channels if channels.count(c) > 1))
        if dupes:
            raise OutputError(f"{fmt} output: the model's channel names repeat ({', '.join(dupes)}),"
                              f" so its columns would be ambiguous; write .npy instead")
        taken = [c for c in channels if c in INDEX_COLUMNS]
        if taken:
            raise OutputError(f"{fmt} output: channel {taken[0]!r} has the name of the table's "
                              f"{taken[0]!r} column (the long table has columns window, step, "
                              f"<channels>); write .npy instead, or rename that column in the "
                              f"training data")
    if fmt == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise OutputError("Parquet output needs pyarrow, which is not installed: "
                              "pip install 'timemar-engine[parquet]' (or write .npy or .csv)"
                              ) from None


def write_chunks(path: str | os.PathLike, fmt: str, shape: tuple[int, int, int],
                 chunks: Iterable[np.ndarray], channels: list[str], overwrite: bool = False) -> Path:
    """Write chunks (b, T, C) adding up to shape[0] windows, never a partial file: all checks
    happen before the first chunk is pulled, the data go through `atomic_output`."""
    path = Path(path)
    check_output(path, fmt, list(channels), overwrite)
    with atomic_output(path, overwrite) as tmp:
        if fmt == "npy":
            done = write_npy_chunks(str(tmp), shape, chunks)
        elif fmt == "csv":
            done = 0
            with open(tmp, "w", newline="") as fh:
                for chunk in chunks:
                    _long_table(chunk, done, channels).to_csv(fh, index=False, header=done == 0,
                                                              float_format="%.7g")
                    done += len(chunk)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            writer, done = None, 0
            try:
                for chunk in chunks:
                    table = pa.Table.from_pandas(_long_table(chunk, done, channels),
                                                 preserve_index=False)
                    writer = writer or pq.ParquetWriter(str(tmp), table.schema)
                    writer.write_table(table)
                    done += len(chunk)
            finally:
                if writer is not None:
                    writer.close()
        if done != shape[0]:
            raise RuntimeError(f"internal error: wrote {done} of {shape[0]} windows")
    return path
