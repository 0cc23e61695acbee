"""The user-facing inference engine: load a checkpoint, sample windows, stream them to disk."""
from __future__ import annotations

import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint
from .sampling import generate
from .writers import guess_format, write_chunks

BACKENDS = ("eager", "auto")
SCALES = ("data", "unit", "model")


def default_checkpoint() -> Path:
    """The packaged default model (an `xs` model trained on UCI Energy)."""
    return Path(str(resources.files("timemar_engine") / "assets" / "default.pt"))


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    return dev


def default_batch_size(device: torch.device) -> int:
    return 4096 if device.type == "cuda" else 2048


def check_count(n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


class Engine:
    """A loaded TimeMAR model ready to sample. Build it with `Engine.load`."""

    def __init__(self, model, scaler, channels, meta, device: torch.device, backend: str,
                 path: Path):
        self.model, self.scaler, self.channels, self.meta = model, scaler, channels, meta
        self.device, self.backend, self.path = device, backend, path
        self.cfg = model.cfg

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str = "auto",
             backend: str = "eager") -> "Engine":
        """Load a checkpoint (None: the packaged default model) onto device ('auto', 'cpu', 'cuda')."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
        dev = resolve_device(device)
        path = Path(path) if path is not None else default_checkpoint()
        model, scaler, channels, meta, _ = load_checkpoint(path, dev)
        return cls(model, scaler, channels, meta, dev, "eager", path)

    @property
    def seq_len(self) -> int:
        return self.cfg.seq_len

    def info(self) -> dict:
        return {
            "path": str(self.path),
            "device": str(self.device),
            "backend": self.backend,
            "seq_len": self.cfg.seq_len,
            "channels": self.channels,
            "scales": list(self.cfg.scales),
            "parameters": self.model.parameter_counts(),
            "config": self.cfg.to_dict(),
            "meta": {k: v for k, v in self.meta.items() if k != "history"},
        }

    def iter_batches(self, n: int, batch_size: int | None = None, seed: int | None = None,
                     temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None, scale: str = "data") -> Iterator[np.ndarray]:
        """Yield float32 chunks (b, T, C) that add up to n windows, in the requested scale."""
        check_count(n)
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        batch_size = batch_size or default_batch_size(self.device)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        gen = torch.Generator(self.device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed))
        done = 0
        while done < n:
            b = min(batch_size, n - done)
            x = generate(self.model, b, gen, temperature=temperature, top_k=top_k, top_p=top_p)
            x = x.float().cpu().numpy()
            if scale != "model":
                x = (x + 1) / 2
                if scale == "data":
                    x = self.scaler.from_unit(x)
            yield x.astype(np.float32, copy=False)
            done += b

    def sample(self, n: int, batch_size: int | None = None, seed: int | None = None,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               scale: str = "data", progress: bool = False) -> np.ndarray:
        """n windows (n, T, C), float32, in data units (or 'unit' [0, 1] / 'model' [-1, 1])."""
        check_count(n)
        chunks = self.iter_batches(n, batch_size, seed, temperature, top_k, top_p, scale)
        out = np.empty((n, self.seq_len, len(self.channels)), dtype=np.float32)
        done = 0
        for chunk in with_progress(chunks, n, progress):
            out[done:done + len(chunk)] = chunk
            done += len(chunk)
        return out

    def sample_to(self, path: str | os.PathLike, n: int, batch_size: int | None = None,
                  seed: int | None = None, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, scale: str = "data", progress: bool = False,
                  overwrite: bool = False, fmt: str | None = None) -> Path:
        """Stream n windows to path (.npy through a memory map, or CSV / Parquet in long form)
        chunk by chunk, so memory stays bounded; written to a temp file, then renamed."""
        path = Path(path)
        check_count(n)
        chunks = self.iter_batches(n, batch_size, seed, temperature, top_k, top_p, scale)
        return write_chunks(path, fmt or guess_format(path), (n, self.seq_len, len(self.channels)),
                            with_progress(chunks, n, progress), self.channels, overwrite)


def with_progress(chunks: Iterator[np.ndarray], n: int, progress: bool) -> Iterator[np.ndarray]:
    """Pass chunks through, advancing a windows/s progress bar."""
    with tqdm(total=n, unit="win", disable=not progress, dynamic_ncols=True) as bar:
        for chunk in chunks:
            yield chunk
            bar.update(len(chunk))
