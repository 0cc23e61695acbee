"""Streaming, atomic writers for sampled windows: .npy, CSV and Parquet."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

FORMATS = ("npy", "csv", "parquet")


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


def write_chunks(path: str | os.PathLike, fmt: str, shape: tuple[int, int, int],
                 chunks: Iterable[np.ndarray], channels: list[str], overwrite: bool = False) -> Path:
    """Write chunks (b, T, C) adding up to shape[0] windows; temp file + rename, never partial."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as e:
            raise RuntimeError("Parquet output needs pyarrow: pip install timemar-engine[parquet]"
                               ) from e
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if fmt == "npy":
            done = write_npy_chunks(tmp, shape, chunks)
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
                    writer = writer or pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
                    done += len(chunk)
            finally:
                if writer is not None:
                    writer.close()
        if done != shape[0]:
            raise RuntimeError(f"internal error: wrote {done} of {shape[0]} windows")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
