"""The user-facing inference engine: load a checkpoint, sample windows, stream them to disk."""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import backends, extension
from .backends import resolve_device
from .checkpoint import load_checkpoint
from .fast_sampling import StreamSampler
from .sampling import check_filters, generate, is_integer
from .value_support import ValueSupport
from .writers import guess_format, write_chunks

SCALES = ("data", "unit", "model")


def default_checkpoint() -> Path:
    """The packaged default model (an `xs` model trained on UCI Energy)."""
    return Path(str(resources.files("timemar_engine") / "assets" / "default.pt"))


def default_batch_size(device: torch.device, backend: str = "eager") -> int:
    """Windows per batch that `iter_batches` yields (the sampling itself goes chunk by chunk,
    `backends.chunk_windows`: 4096 on CUDA, 256 on CPU, where the engine works best on batches
    whose activations stay in cache: on the 2-core dev machine 128-512 measured alike)."""
    if device.type == "cuda":
        return 4096
    return 256 if backend == "engine" else 2048


def chunk_seed(seed: int, chunk: int) -> int:
    """Generator seed of chunk `chunk` of a run seeded `seed`, from those two numbers alone:
    SplitMix64's output function of z = (seed mod 2**64) + (chunk + 1) * 0x9E3779B97F4A7C15
    (mod 2**64), i.e. z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27;
    z *= 0x94D049BB133111EB; z ^= z >> 31 (all mod 2**64)."""
    m = 2 ** 64
    z = (seed % m + (chunk + 1) * 0x9E3779B97F4A7C15) % m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % m
    return z ^ (z >> 31)


def rebatch(arrays: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Regroup a stream of arrays into arrays of `size` rows (the last one may be smaller)."""
    buf: list[np.ndarray] = []
    have = 0
    for a in arrays:
        while len(a):
            take = min(size - have, len(a))
            buf.append(a[:take])
            have, a = have + take, a[take:]
            if have == size:
                yield buf[0] if len(buf) == 1 else np.concatenate(buf)
                buf, have = [], 0
    if buf:
        yield buf[0] if len(buf) == 1 else np.concatenate(buf)


def check_count(n) -> None:
    if not is_integer(n) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


class Engine:
    """A loaded TimeMAR model ready to sample. Build it with `Engine.load`."""

    def __init__(self, model, scaler, channels, meta, device: torch.device, backend: str,
                 path: Path, decoder: str = "pytorch", precision: str = "auto",
                 snap_values: bool = True):
        self.model, self.scaler, self.channels, self.meta = model, scaler, channels, meta
        self.device, self.backend, self.path, self.decoder = device, backend, path, decoder
        self.cfg = model.cfg
        # levels and point masses of the training data, restored in 'data' / 'unit' windows
        self.value_support = ValueSupport.from_dict(meta.get("value_support") if snap_values
                                                    else None)
        self._sampler = (StreamSampler(model, device, backends.cpu_streams(), precision)
                         if backend == "engine" else None)
        # the transformer's arithmetic: the eager backend computes as the model is stored
        self.precision = self._sampler.precision if self._sampler else "fp32"
        if decoder != "pytorch":
            self._sampler.set_decoder(self._exported_decoder(decoder))
        self._affines: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str = "auto",
             backend: str = "auto", decoder: str = "auto", precision: str = "auto",
             snap_values: bool = True) -> "Engine":
        """Load a checkpoint (None: the packaged default model) onto device ('auto', 'cpu', 'cuda')
        with a sampling backend ('auto': the fastest correct one here, 'engine' or 'eager'), a
        decoder ('auto' = 'pytorch', 'onnxruntime' or 'tensorrt': `backends.resolve_decoder`)
        and the engine transformer's precision ('auto', 'fp32' or 'int8':
        `backends.resolve_precision`; the eager backend takes only 'auto' or 'fp32').
        snap_values=False: windows as the decoder emits them, without restoring the training
        data's levels and point masses (`value_support.py`)."""
        dev = resolve_device(device)
        path = Path(path) if path is not None else default_checkpoint()
        model, scaler, channels, meta, _ = load_checkpoint(path, dev)
        backend = backends.resolve_backend(backend, dev, model.cfg.multiscale)
        if backend == "eager" and precision not in ("auto", "fp32"):  # the engine checks its own
            raise ValueError(f"precision {precision!r}: the eager backend computes in the model's "
                             "fp32 (auto or fp32); int8 needs backend='engine'")
        decoder = backends.resolve_decoder(decoder, backend)
        return cls(model, scaler, channels, meta, dev, backend, path, decoder, precision,
                   snap_values)

    def _exported_decoder(self, decoder: str):
        """The model's decoder exported to ONNX (model scale) and run by onnxruntime, or built
        into a (cached) TensorRT plan."""
        from . import export
        try:
            if decoder == "onnxruntime":
                return export.OrtDecoder.from_model(self.model, self.scaler, "model")
            export.require_tensorrt()
        except export.MissingDependency as e:
            raise ValueError(f"decoder {decoder!r}: {e}") from None
        import hashlib
        import tempfile
        sha = hashlib.sha256(self.path.read_bytes()).hexdigest()
        with tempfile.TemporaryDirectory() as tmp:
            onnx = export.export_onnx(self.model, self.scaler, Path(tmp) / "decoder.onnx", "model")
            plan = export.build_tensorrt(onnx, Path(tmp) / "decoder.plan", checkpoint_sha256=sha,
                                         scale="model")
            return export.TrtDecoder(plan)

    @property
    def seq_len(self) -> int:
        return self.cfg.seq_len

    def info(self) -> dict:
        return {
            "path": str(self.path),
            "device": str(self.device),
            "backend": self.backend,
            "decoder": self.decoder,
            "precision": self.precision,
            "backends_available": backends.available_backends(self.device, self.cfg.multiscale),
            "triton": backends.triton_available(),
            "extension": extension.status(),
            "seq_len": self.cfg.seq_len,
            "channels": self.channels,
            "scales": list(self.cfg.scales),
            "value_support": self.value_support.describe(self.channels),
            "parameters": self.model.parameter_counts(),
            "config": self.cfg.to_dict(),
            "meta": {k: v for k, v in self.meta.items() if k != "history"},
        }

    def iter_batches(self, n: int, batch_size: int | None = None, seed: int | None = None,
                     temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None, scale: str = "data") -> Iterator[np.ndarray]:
        """Yield float32 arrays (b, T, C) of batch_size windows (the last one smaller) that add
        up to n windows, in the requested scale.

        The windows are those of fixed chunks (`backends.chunk_windows` per device type), each
        with its own generator seeded `chunk_seed(seed, chunk index)`, so a seed gives the same
        windows for any batch size and any number of processes (`sample_to(distributed=True)`).
        Every argument is checked here, when this is called (before any sampling), and a bad one
        is a ValueError that names it: n and batch_size positive integers, seed None or an integer
        in [-2**63, 2**64), temperature finite > 0, top_k an integer >= 1 (>= the codebook size
        keeps every code), top_p in (0, 1], scale one of 'data', 'unit', 'model'."""
        n, batch_size, seed, filters = self._check(n, batch_size, seed, temperature, top_k, top_p,
                                                   scale)
        chunks = (x for _, x in self.iter_chunks(n, seed, range(self.n_chunks(n)), filters, scale))
        return rebatch(chunks, batch_size)

    def _check(self, n, batch_size, seed, temperature, top_k, top_p,
               scale) -> tuple[int, int, int, dict]:
        """Validated (n, batch_size, seed, filters); seed None becomes a fresh random seed."""
        check_count(n)
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        if batch_size is not None and (not is_integer(batch_size) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if seed is not None and (not is_integer(seed) or not -2 ** 63 <= seed < 2 ** 64):
            raise ValueError(f"seed must be an integer in [-2**63, 2**64), got {seed!r}")
        filters = check_filters(temperature, top_k, top_p)
        batch_size = int(batch_size or default_batch_size(self.device, self.backend))
        return int(n), batch_size, secrets.randbits(64) if seed is None else int(seed), filters

    @property
    def chunk_size(self) -> int:
        return backends.chunk_windows(self.device)

    def n_chunks(self, n: int) -> int:
        return -(-n // self.chunk_size)

    def iter_chunks(self, n: int, seed: int, chunks: Iterable[int], filters: dict,
                    scale: str) -> Iterator[tuple[int, np.ndarray]]:
        """(chunk index, its windows as float32 numpy in `scale`) for the given chunks of an
        n-window run: chunk c holds windows [c * chunk_size, min(n, (c + 1) * chunk_size)) and
        draws them from a generator seeded chunk_seed(seed, c), one generate call per chunk."""
        chunks, size = list(chunks), self.chunk_size
        rows = [min(size, n - c * size) for c in chunks]
        gens = (torch.Generator(self.device).manual_seed(chunk_seed(seed, c)) for c in chunks)
        if self._sampler is not None and self._sampler.fuses_scaling:
            batches = self._sampler.iter_generate(rows, gens, self._affine(scale), **filters)
            return ((c, self._snap(x.cpu().numpy(), scale)) for c, x in zip(chunks, batches))
        if self._sampler is not None:
            batches = self._sampler.iter_generate(rows, gens, **filters)
        else:
            batches = (generate(self.model, b, g, **filters) for b, g in zip(rows, gens))
        return ((c, self._to_scale(x, scale)) for c, x in zip(chunks, batches))

    def _affine(self, scale: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(span, lo) float64 device tensors mapping unit windows to `scale` for the decode
        epilogue (None: model scale), made once per scale and kept (CUDA graphs hold them)."""
        if scale == "model":
            return None
        if scale not in self._affines:
            C = len(self.channels)
            span, lo = ((self.scaler.hi - self.scaler.lo, self.scaler.lo) if scale == "data"
                        else (np.ones(C), np.zeros(C)))
            self._affines[scale] = tuple(torch.as_tensor(a, dtype=torch.float64, device=self.device)
                                         for a in (span, lo))
        return self._affines[scale]

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
                  overwrite: bool = False, fmt: str | None = None,
                  distributed: bool = False) -> Path:
        """Stream n windows to path (.npy through a memory map, or CSV / Parquet in long form)
        chunk by chunk, so memory stays bounded; written to a temp file, then renamed.

        distributed=True: this process is one rank of a torchrun job (the process group is set
        up from torchrun's environment unless it already is); the ranks share the chunks and
        write one .npy with the same bytes as a single process (`distributed.sample_sharded`)."""
        path = Path(path)
        if distributed:
            from .distributed import sample_sharded

            n, _, seed, filters = self._check(n, batch_size, seed, temperature, top_k, top_p,
                                              scale)
            return sample_sharded(self, path, n, seed, filters, scale, progress, overwrite,
                                  fmt or guess_format(path))
        check_count(n)
        chunks = self.iter_batches(n, batch_size, seed, temperature, top_k, top_p, scale)
        return write_chunks(path, fmt or guess_format(path), (n, self.seq_len, len(self.channels)),
                            with_progress(chunks, n, progress), self.channels, overwrite)

    def encode(self, windows: np.ndarray, batch_size: int = 4096,
               scale: str = "data") -> list[np.ndarray]:
        """Token maps of given windows (n, T, C), the inverse of sampling: K int64 arrays
        (n, s_k). `scale` says what units the windows are in ('data', 'unit' or 'model')."""
        x = np.asarray(windows)
        T, C = self.seq_len, len(self.channels)
        if x.ndim != 3 or x.shape[1:] != (T, C):
            raise ValueError(f"windows must have shape (n, {T}, {C}), got {x.shape}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        if not np.isfinite(x).all():
            raise ValueError("windows contain NaN or inf")
        if scale == "data":
            x = self.scaler.to_unit(x)
        if scale != "model":
            x = x * 2 - 1
        parts: list[list[np.ndarray]] = [[] for _ in self.cfg.scales]
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xb = torch.as_tensor(x[i:i + batch_size], dtype=torch.float32, device=self.device)
                for k, idx in enumerate(self.model.vqvae.tokenize(xb)):
                    parts[k].append(idx.cpu().numpy())
        return [np.concatenate(p) if p else np.zeros((0, s), np.int64)
                for p, s in zip(parts, self.cfg.scales)]

    def decode(self, indices: list[np.ndarray], scale: str = "data") -> np.ndarray:
        """Windows (n, T, C) float32 from K token maps (n, s_k), as `encode` returns them."""
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        scales, V = self.cfg.scales, self.cfg.codebook_size
        if len(indices) != len(scales):
            raise ValueError(f"expected {len(scales)} token maps, got {len(indices)}")
        idx = [torch.as_tensor(np.asarray(a), device=self.device).long() for a in indices]
        for k, (a, s) in enumerate(zip(idx, scales)):
            if a.ndim != 2 or a.shape != (len(idx[0]), s):
                raise ValueError(f"token map {k} must have shape (n, {s}), got {tuple(a.shape)}")
            if a.numel() and (a.min() < 0 or a.max() >= V):
                raise ValueError(f"token map {k} has indices outside [0, {V})")
        with torch.no_grad():
            x = self.model.vqvae.decode(self.model.vqvae.quant.decode_indices(idx)).clamp_(-1, 1)
        return self._to_scale(x, scale)

    def _to_scale(self, x: torch.Tensor, scale: str) -> np.ndarray:
        """Model-scale windows to numpy float32 in the requested scale (snapped: `_snap`)."""
        x = x.float().cpu().numpy()
        if scale != "model":
            x = (x + 1) / 2
            if scale == "data":
                x = self.scaler.from_unit(x)
        return self._snap(x.astype(np.float32, copy=False), scale)

    def _snap(self, x: np.ndarray, scale: str) -> np.ndarray:
        """Windows in 'data' or 'unit' scale with the training data's levels and point masses
        restored in place (`value_support.py`); 'model' windows are returned as they are."""
        if scale == "model" or not self.value_support:
            return x
        if scale == "data":
            return self.value_support.snap(x, self.scaler.lo, self.scaler.hi - self.scaler.lo)
        C = len(self.channels)
        return self.value_support.snap(x, np.zeros(C), np.ones(C))


def with_progress(chunks: Iterator[np.ndarray], n: int, progress: bool) -> Iterator[np.ndarray]:
    """Pass chunks through, advancing a windows/s progress bar."""
    with tqdm(total=n, unit="win", disable=not progress, dynamic_ncols=True) as bar:
        for chunk in chunks:
            yield chunk
            bar.update(len(chunk))
