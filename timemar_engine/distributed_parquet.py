"""Sharded Parquet output: one dataset folder of fixed parts, written by every rank of a
torchrun job (the protocol is `distributed.sample_sharded`'s).

`big.parquet` becomes a folder of `part-00000.parquet`, `part-00001.parquet`, ...: part p holds
the run's chunks [p * PART_CHUNKS, (p + 1) * PART_CHUNKS) (65,536 windows on CPU), one row group
per chunk, in the long table of the single-process writer (window, step, <channels>). Parts depend
on n, the seed and the chunk size alone, so 1 or N processes write the same files byte for byte.
Rank 0 creates the hidden folder `.big.parquet.<random>.tmp` next to the final name; rank p % world
writes part p there as `.part-XXXXX.parquet.tmp`, fsyncs it and renames it to its name; rank 0
fsyncs the parts and the folder, then publishes the folder (`publish`).

TIMEMAR_PARQUET_PART_CHUNKS overrides PART_CHUNKS (small parts for tests).
"""
from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from .safe_io import _fsync, check_writable
from .writers import _long_table, check_format

if TYPE_CHECKING:
    from .engine import Engine

PART_CHUNKS_ENV = "TIMEMAR_PARQUET_PART_CHUNKS"
PART_CHUNKS = int(os.environ.get(PART_CHUNKS_ENV, "256"))


def _exists_error(path: Path) -> FileExistsError:
    return FileExistsError(f"{path} exists; pass --force to overwrite it")


def part_name(p: int) -> str:
    return f"part-{p:05d}.parquet"


def check_dataset(path: Path, channels: list[str], overwrite: bool) -> None:
    """Before any sampling: the table's columns, pyarrow, and the final name (free, or --force)."""
    check_format("parquet", channels)
    if os.path.lexists(path) and not overwrite:
        raise _exists_error(path)
    if not path.is_dir():
        check_writable(path, overwrite)


def create(engine: Engine, path: Path, n: int, overwrite: bool) -> Path:
    """Rank 0: the empty hidden temp folder next to path (mode 0o777 & ~umask)."""
    check_dataset(path, engine.channels, overwrite)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def write(engine: Engine, tmp: Path, n: int, seed: int, filters: dict, scale: str, rank: int,
          world: int) -> Iterator[int]:
    """Write parts rank, rank + world, ... into tmp; yields the windows of each chunk written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = engine.n_chunks(n)
    for p in range(rank, -(-total // PART_CHUNKS), world):
        part, writer = tmp / f".{part_name(p)}.tmp", None
        chunks = range(p * PART_CHUNKS, min(total, (p + 1) * PART_CHUNKS))
        try:
            for c, x in engine.iter_chunks(n, seed, chunks, filters, scale):
                df = _long_table(x, c * engine.chunk_size, engine.channels)
                table = pa.Table.from_pandas(df, preserve_index=False)
                writer = writer or pq.ParquetWriter(str(part), table.schema)
                writer.write_table(table)
                yield len(x)
        finally:
            if writer is not None:
                writer.close()
        _fsync(part)
        os.rename(part, tmp / part_name(p))


def publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rank 0, all parts written: fsync them and tmp, then rename tmp to path. The name is first
    reserved with mkdir (atomic; fails if anything has it), so that the rename replaces only that
    empty reservation. With overwrite, an existing path is first renamed aside to a hidden
    `.<name>.<random>.old`, then the new folder published, the parent fsynced, and only then the
    old one removed (renamed back if publishing fails)."""
    for f in sorted(tmp.iterdir()):
        _fsync(f)
    _fsync(tmp, directory=True)
    old = None
    if overwrite and os.path.lexists(path):
        old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
        os.rename(path, old)
    try:
        try:
            path.mkdir()
        except FileExistsError:
            raise _exists_error(path) from None
        try:
            os.rename(tmp, path)
        except BaseException:
            with suppress(OSError):
                path.rmdir()
            raise
    except BaseException:
        if old is not None:
            with suppress(OSError):
                os.rename(old, path)
        raise
    _fsync(path.parent, directory=True)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def remove(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
