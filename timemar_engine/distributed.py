"""Sharded sampling across the processes of a torchrun job (one node or several).

The run's chunks (`Engine.iter_chunks`: fixed-size, each with its own generator seeded from
(seed, chunk index) alone) are dealt round-robin: chunk c goes to rank c % world. Rank 0 creates
the output as a hidden temp `.npy` next to the final name (header and full size) and broadcasts
its name; every rank writes its chunks into that file through memory maps at known offsets and
fsyncs; after a collective that also gathers every rank's error, rank 0 publishes the temp under
the final name with `safe_io`'s no-clobber logic, or removes it if any rank failed. Every rank
then raises the same `ShardError` naming the first failing rank, so the job exits non-zero and
no partial file is left under the final name. The file holds the same bytes as a single-process
`Engine.sample_to` of the same seed. Parquet output follows the same steps with a dataset folder
of fixed parts instead, part p written by rank p % world (`distributed_parquet`). Multi-node runs
need the output folder on a shared file system.

Debug hook: TIMEMAR_FAIL_RANK=R makes rank R raise before writing (for the failure tests).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import backends
from . import distributed_parquet as dp
from .backends import resolve_device
from .safe_io import OutputError, _fsync, _make_temp, _publish, check_writable
from .writers import check_format

if TYPE_CHECKING:
    from .engine import Engine

FAIL_RANK_ENV = "TIMEMAR_FAIL_RANK"


class ShardError(RuntimeError):
    """A sharded run failed on some rank; the message names the rank and its error (one line)."""


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank() -> int:
    """This process's global rank as torchrun set it (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(device: torch.device) -> None:
    """Join the job's process group from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT): gloo for CPU processes, nccl for CUDA ones."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise ValueError(f"not launched by torchrun: {', '.join(missing)} not set (start the "
                         f"processes with torchrun, or set these variables)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kw = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backends.distributed_backend(device), init_method="env://", **kw)


@contextmanager
def job(device: str) -> Iterator[None]:
    """This process as one rank of its torchrun job inside the block: the process group set up
    from torchrun's environment for `device` (CUDA: the LOCAL_RANK'th GPU), torn down after. A
    block that ends normally (an error already reported included) ends with a barrier, so that
    rank 0's error line is out before any rank exits: torchrun stops the whole job when the
    first process does."""
    init_from_env(resolve_device(backends.distributed_device(device, local_rank())))
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and message (OSErrors as 'file: reason')."""
    if isinstance(e, OSError) and e.filename and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = f"{type(e).__name__}: {e}"
    return " ".join(text.split())


def _broadcast(obj):
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _Sink(NamedTuple):
    """How one output format is written by the ranks together (rank 0: create, publish, remove;
    every rank: write, which yields the windows of each chunk it wrote)."""
    create: Callable[[Engine, Path, int, bool], Any]
    write: Callable[[Engine, Any, int, int, dict, str, int, int], Iterator[int]]
    publish: Callable[[Any, Path, bool], None]
    remove: Callable[[Any], None]


def sample_sharded(engine: Engine, path: Path, n: int, seed: int, filters: dict, scale: str,
                   progress: bool, overwrite: bool, fmt: str) -> Path:
    """Write this rank's share of n windows into one .npy (or Parquet folder) at path; see the
    module docstring. Sets up (and tears down) the process group from torchrun's environment if
    there is none."""
    if fmt not in ("npy", "parquet"):
        raise OutputError(f"sharded sampling writes .npy or Parquet only, not {fmt}; name an .npy "
                          f"or .parquet output (or sample {fmt} in one process)")
    if fmt == "parquet":
        check_format(fmt, engine.channels)
    sink = _Sink(dp.create, dp.write, dp.publish, dp.remove) if fmt == "parquet" else _NPY
    own = not dist.is_initialized()
    if own:
        init_from_env(engine.device)
    try:
        return _sample_sharded(engine, path, n, seed, filters, scale, progress, overwrite, sink)
    finally:
        if own:
            dist.destroy_process_group()


def _create(engine: Engine, path: Path, n: int, overwrite: bool) -> tuple[Path, int]:
    """Rank 0: the hidden temp .npy of the full shape (a sparse file) and its data offset."""
    check_writable(path, overwrite)
    tmp = _make_temp(path)
    try:
        header = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                           shape=(n, engine.seq_len, len(engine.channels)))
        offset = header.offset
        del header
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, offset


def _write_share(engine: Engine, made: tuple[Path, int], n: int, seed: int, filters: dict,
                 scale: str, rank: int, world: int) -> Iterator[int]:
    """Sample chunks rank, rank + world, ... and write each at its offset in the temp .npy."""
    tmp, offset = made
    row = engine.seq_len * len(engine.channels) * 4
    size = engine.chunk_size
    for c, chunk in engine.iter_chunks(n, seed, range(rank, engine.n_chunks(n), world), filters,
                                       scale):
        view = np.memmap(tmp, dtype=np.float32, mode="r+", offset=offset + c * size * row,
                         shape=chunk.shape)
        view[:] = chunk
        view.flush()
        del view
        yield len(chunk)
    _fsync(tmp)


def _publish_npy(made: tuple[Path, int], path: Path, overwrite: bool) -> None:
    _publish(made[0], path, overwrite)
    _fsync(path.parent, directory=True)


_NPY = _Sink(_create, _write_share, _publish_npy, lambda made: made[0].unlink(missing_ok=True))


def _sample_sharded(engine: Engine, path: Path, n: int, seed: int, filters: dict, scale: str,
                    progress: bool, overwrite: bool, sink: _Sink) -> Path:
    rank, world = dist.get_rank(), dist.get_world_size()
    made = error = None
    if rank == 0:
        try:
            made = sink.create(engine, path, n, overwrite)
        except Exception as e:
            error = one_line(e)
    made, seed, error = _broadcast((made, seed, error))  # one seed for all ranks
    if error:
        raise ShardError(f"rank 0 failed: {error}")
    try:
        with tqdm(total=n, unit="win", disable=not progress or rank != 0,
                  dynamic_ncols=True) as bar:
            try:
                if os.environ.get(FAIL_RANK_ENV) == str(rank):
                    raise RuntimeError(f"failure injected by {FAIL_RANK_ENV}={rank}")
                for done in sink.write(engine, made, n, seed, filters, scale, rank, world):
                    bar.update(min(done * world, n - bar.n))  # global rate, estimated from rank 0
            except Exception as e:
                error = one_line(e)
            errors: list = [None] * world
            dist.all_gather_object(errors, error)  # the barrier after every rank's writes
            failed = next(((r, e) for r, e in enumerate(errors) if e), None)
            if rank == 0:
                if failed is None:
                    try:
                        sink.publish(made, path, overwrite)
                        bar.update(n - bar.n)
                    except Exception as e:
                        failed = (0, one_line(e))
                if failed:
                    sink.remove(made)  # before any rank learns of the failure
            failed = _broadcast(failed)
    except BaseException:
        if rank == 0:
            sink.remove(made)
        raise
    if failed:
        raise ShardError(f"rank {failed[0]} failed: {failed[1]}")
    return path
