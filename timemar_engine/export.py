"""The VQ-VAE decoder as a deployable graph: ONNX (run by onnxruntime) and TensorRT plans.

The exported graph maps latents f_hat (B, Cz, T') to windows (B, T, C) in one scale ('data',
'unit' or 'model', baked in); only the batch is dynamic (per-scale lengths are schedule
constants: symbolic sizes have exported silently wrong graphs, ENGINE_NOTES 5.1). The decoder's
nn.MultiheadAttention is cross-attention (query is not key), which never takes PyTorch's fused
fast path, and export traces the plain path anyway, so eager and exported graphs compute alike.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import MinMaxScaler
from .model import TimeMAR
from .safe_io import atomic_output
from .sampling import generate

SCALES = ("data", "unit", "model")
INPUT, OUTPUT = "f_hat", "windows"
TRT_MISSING = ("TensorRT is not installed (pip install tensorrt, with NVIDIA's CUDA libraries and "
               "a GPU); --format onnx works without it")


class MissingDependency(ImportError):
    """An optional package the requested export needs; the message says how to install it."""


class ExportError(RuntimeError):
    """An export or engine build that failed; the message says where."""


def require_onnx(*modules: str) -> None:
    """Raise MissingDependency unless the given modules (default: all three) import."""
    modules = modules or ("onnx", "onnxruntime", "onnxscript")
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependency(f"ONNX export needs {', '.join(modules)} ({', '.join(missing)} "
                                f"not installed here): pip install 'timemar-engine[export]'")


def require_tensorrt():
    """The tensorrt module, or MissingDependency with the one-line install hint."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError:
        raise MissingDependency(TRT_MISSING) from None


class DecoderGraph(nn.Module):
    """A frozen float32 copy of a model's decoder: f_hat (B, Cz, T') -> windows (B, T, C),
    clamped to [-1, 1] and mapped to `scale` exactly as `Engine` does it (data: per-channel
    u * span + lo, exactly lo for a constant channel)."""

    def __init__(self, model: TimeMAR, scaler: MinMaxScaler, scale: str = "data"):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        self.scale = scale
        self.decoder = copy.deepcopy(model.vqvae.decoder).float().eval().requires_grad_(False)
        span = scaler.hi - scaler.lo
        device = next(self.decoder.parameters()).device
        self.register_buffer("lo", torch.tensor(scaler.lo, dtype=torch.float32, device=device))
        self.register_buffer("span", torch.tensor(np.where(span > 0, span, 0.0),
                                                  dtype=torch.float32, device=device))
        self.eval()

    def forward(self, f_hat: torch.Tensor) -> torch.Tensor:
        trend, coarse, fine = self.decoder(f_hat)
        x = (trend + coarse + fine).transpose(1, 2).clamp(-1, 1)
        if self.scale == "model":
            return x
        u = (x + 1) / 2
        return u if self.scale == "unit" else u * self.span + self.lo


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's informational warnings (missing torchvision ops, skipped folds)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _program(model: TimeMAR, scaler: MinMaxScaler, scale: str):
    """The decoder graph as a torch.onnx ONNXProgram with a dynamic batch dimension."""
    require_onnx()
    graph = DecoderGraph(model, scaler, scale).cpu()
    cfg = model.cfg
    example = torch.zeros(2, cfg.code_dim, cfg.latent_len)  # batch 2: 1 would be specialised
    with _quiet_exporter():
        return torch.onnx.export(graph, (example,), dynamo=True, input_names=[INPUT],
                                 output_names=[OUTPUT], verbose=False,
                                 dynamic_shapes={"f_hat": {0: torch.export.Dim("batch", min=1)}})


def export_onnx(model: TimeMAR, scaler: MinMaxScaler, path: str | os.PathLike,
                scale: str = "data", overwrite: bool = True) -> Path:
    """Write the decoder graph to an .onnx file (atomically; an existing file is replaced only
    with overwrite, else FileExistsError). Input "f_hat" (batch, Cz, T'), output "windows"
    (batch, T, C), float32."""
    program = _program(model, scaler, scale)
    with atomic_output(path, overwrite=overwrite) as tmp:
        program.save(tmp, external_data=False)
    return Path(path)


def max_error(run: Callable[[torch.Tensor], torch.Tensor], model: TimeMAR, scaler: MinMaxScaler,
              latents: torch.Tensor, scale: str) -> float:
    """Max abs difference between run(latents) and the PyTorch DecoderGraph (on the CPU)."""
    latents = latents.detach().float().cpu()
    with torch.no_grad():
        ref = DecoderGraph(model, scaler, scale).cpu()(latents)
    return float((run(latents).cpu() - ref).abs().max())


def validate_onnx(path: str | os.PathLike, model: TimeMAR, scaler: MinMaxScaler,
                  latents: torch.Tensor, scale: str) -> float:
    """Max abs error of the .onnx file in onnxruntime against PyTorch on the given latents."""
    return max_error(OrtDecoder(path), model, scaler, latents, scale)


def validate_tensorrt(plan: str | os.PathLike, model: TimeMAR, scaler: MinMaxScaler,
                      latents: torch.Tensor, scale: str) -> float:
    """Max abs error of a TensorRT plan (run on the current CUDA device) against PyTorch."""
    decoder = TrtDecoder(plan)
    return max_error(lambda z: decoder(z.cuda()), model, scaler, latents, scale)


@torch.no_grad()
def validation_latents(model: TimeMAR, n_random: int = 256, n_sampled: int = 64,
                       seed: int = 0) -> dict[str, torch.Tensor]:
    """Latents to check an export on, built like real ones: "random" from uniformly random token
    maps, "sampled" from the token maps the model itself samples."""
    g = torch.Generator(next(model.parameters()).device).manual_seed(seed)
    quant, cfg = model.vqvae.quant, model.cfg
    rand = [torch.randint(cfg.codebook_size, (n_random, s), generator=g, device=g.device)
            for s in cfg.scales]
    _, sampled = generate(model, n_sampled, g, return_indices=True)
    return {"random": quant.decode_indices(rand).cpu(),
            "sampled": quant.decode_indices(sampled).cpu()}


class OrtDecoder:
    """An exported decoder (.onnx path or bytes) in onnxruntime: f_hat (B, Cz, T') -> windows
    (B, T, C) float32 on f_hat's device. CUDA inputs run in the CUDA execution provider when
    onnxruntime has it (through I/O binding, no copies), otherwise on the CPU; intra-op threads
    are torch.get_num_threads() when the session is made."""

    def __init__(self, onnx: str | os.PathLike | bytes):
        require_onnx("onnxruntime")
        import onnxruntime

        self._ort = onnxruntime
        self._onnx = onnx if isinstance(onnx, bytes) else str(onnx)
        self._sessions: dict[str, object] = {}
        cpu = self._session(torch.device("cpu"))
        (inp,), (out,) = cpu.get_inputs(), cpu.get_outputs()
        self.input, self.output = inp.name, out.name
        self.window_shape = tuple(out.shape[1:])  # (T, C): constants of the graph

    @classmethod
    def from_model(cls, model: TimeMAR, scaler: MinMaxScaler, scale: str = "data") -> "OrtDecoder":
        """Export the model's decoder in memory (no file) and load it."""
        return cls(_program(model, scaler, scale).model_proto.SerializeToString())

    def _session(self, device: torch.device):
        key = str(device)
        if key not in self._sessions:
            opts = self._ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = torch.get_num_threads(), 1
            providers: list = ["CPUExecutionProvider"]
            if device.type == "cuda":
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
            self._sessions[key] = self._ort.InferenceSession(self._onnx, opts, providers=providers)
        return self._sessions[key]

    def __call__(self, f_hat: torch.Tensor) -> torch.Tensor:
        x = f_hat.detach().float().contiguous()
        if x.is_cuda and "CUDAExecutionProvider" in self._ort.get_available_providers():
            return self._run_cuda(x)
        y = self._session(torch.device("cpu")).run([self.output], {self.input: x.cpu().numpy()})[0]
        return torch.from_numpy(y).to(f_hat.device)

    def _run_cuda(self, x: torch.Tensor) -> torch.Tensor:
        sess, dev = self._session(x.device), x.device.index or 0
        out = torch.empty((len(x), *self.window_shape), device=x.device)
        io = sess.io_binding()
        io.bind_input(self.input, "cuda", dev, np.float32, tuple(x.shape), x.data_ptr())
        io.bind_output(self.output, "cuda", dev, np.float32, tuple(out.shape), out.data_ptr())
        torch.cuda.current_stream(x.device).synchronize()  # ORT runs on its own stream
        sess.run_with_iobinding(io)
        io.synchronize_outputs()
        return out


def trt_cache_dir() -> Path:
    """Where built plans are kept: $XDG_CACHE_HOME (or ~/.cache)/timemar-engine/tensorrt."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "timemar-engine" / "tensorrt"


def plan_key(trt_version: str, gpu: str, profile: tuple[int, int, int], precision: str,
             checkpoint_sha256: str, scale: str) -> str:
    """Cache key of a plan: everything a TensorRT engine is tied to, hashed."""
    fields = dict(tensorrt=trt_version, gpu=gpu, profile=list(profile), precision=precision,
                  checkpoint=checkpoint_sha256, scale=scale)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def _build_plan(trt, onnx_path: Path, profile: tuple[int, int, int], fp16: bool,
                workspace: int) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network()  # 10.x: explicit batch; 11.x: strongly typed
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    inp = network.get_input(0)
    rest = tuple(inp.shape)[1:]
    opt = builder.create_optimization_profile()
    opt.set_shape(inp.name, *((b, *rest) for b in profile))
    config.add_optimization_profile(opt)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see its log)")
    return bytes(plan)


def build_tensorrt(onnx_path: str | os.PathLike, out: str | os.PathLike, *,
                   checkpoint_sha256: str, scale: str, max_batch: int = 4096,
                   opt_batch: int | None = None, fp16: bool = False,
                   workspace: int = 1 << 30, cache_dir: str | os.PathLike | None = None,
                   overwrite: bool = True) -> Path:
    """Build a TensorRT plan for batches 1..max_batch (tuned for opt_batch, default max_batch)
    from an exported decoder, reusing a cached plan with the same key (`plan_key`), and write
    it to out atomically. fp16 needs TensorRT 10.x (11.x takes precision from the graph)."""
    trt = require_tensorrt()
    if not torch.cuda.is_available():
        raise MissingDependency("TensorRT needs a CUDA GPU and none is visible here; --format "
                                "onnx works without one")
    if fp16 and not hasattr(trt.BuilderFlag, "FP16"):
        raise ValueError(f"TensorRT {trt.__version__} builds strongly typed networks (no FP16 "
                         f"flag): the plan computes in the ONNX graph's float32")
    profile = (1, min(opt_batch or max_batch, max_batch), max_batch)
    major, minor = torch.cuda.get_device_capability()
    gpu = f"{torch.cuda.get_device_name()} sm{major}{minor}"
    key = plan_key(trt.__version__, gpu, profile, "fp16" if fp16 else "fp32", checkpoint_sha256,
                   scale)
    cached = Path(cache_dir or trt_cache_dir()) / f"{key}.plan"
    if not cached.is_file():
        plan = _build_plan(trt, Path(onnx_path), profile, fp16, workspace)
        with atomic_output(cached, overwrite=True) as tmp:
            tmp.write_bytes(plan)
    with atomic_output(out, overwrite=overwrite) as tmp:
        shutil.copyfile(cached, tmp)
    return Path(out)


class TrtDecoder:
    """A TensorRT plan of the decoder: f_hat (B, Cz, T') CUDA -> windows (B, T, C) CUDA float32,
    run on the current torch stream."""

    def __init__(self, plan: str | os.PathLike | bytes):
        trt = require_tensorrt()
        data = plan if isinstance(plan, bytes) else Path(plan).read_bytes()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ExportError("TensorRT cannot load the plan (built by another TensorRT version "
                              "or for another GPU? rebuild it)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        (self.input,), (self.output,) = inputs, [n for n in names if n not in inputs]

    def __call__(self, f_hat: torch.Tensor) -> torch.Tensor:
        x = f_hat.detach().float().contiguous()
        if not x.is_cuda:
            raise ValueError("TrtDecoder takes CUDA tensors")
        if not self.context.set_input_shape(self.input, tuple(x.shape)):
            raise ValueError(f"input shape {tuple(x.shape)} is outside the plan's profile")
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), device=x.device)
        self.context.set_tensor_address(self.input, x.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(x.device).cuda_stream):
            raise ExportError("TensorRT execution failed (see its log)")
        return out
