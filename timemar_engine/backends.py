"""Backend dispatch, in one place: devices, sampling backends, kernels and NVTX ranges.

- device: 'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N';
- sampling backend: 'eager' (the plain PyTorch reference), 'engine' (preallocated, static-shape
  loop; on CUDA bf16 + Triton attention + CUDA graphs) or 'auto' (the fastest correct one here);
- kernels: Triton on CUDA; PyTorch CPU paths elsewhere. Tests run the Triton kernels on CPU tensors
  with TRITON_INTERPRET=1 (set before the kernel modules are imported) by calling them directly;
- the C++/CUDA extension's ops (`extension_ops`) in the engine when built, else the PyTorch ops;
- training arithmetic (`resolve_train_precision`, `train_autocast`): stage 2 in bf16 where the
  hardware has it, else fp32.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable

import torch

BACKENDS = ("auto", "eager", "engine")


DEVICES = "auto, cpu, cuda or cuda:N"
DECODERS = ("auto", "pytorch", "onnxruntime", "tensorrt")


def resolve_decoder(decoder: str, backend: str) -> str:
    """How the engine decodes f_hat to windows. 'auto' -> 'pytorch' (with the extension's
    epilogue when built): onnxruntime did not measurably beat it on CPU (bench/
    test_bench_extension.py) and TensorRT has not been measured. 'onnxruntime' / 'tensorrt' run
    the exported decoder (`export.py`) inside the engine's loop, so they need backend 'engine'."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose from {', '.join(DECODERS)}")
    if decoder == "auto":
        return "pytorch"
    if decoder != "pytorch" and backend != "engine":
        raise ValueError(f"decoder {decoder!r} runs inside the engine's loop: use backend "
                         f"'engine' (or auto), not {backend!r}")
    return decoder


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cpu', 'cuda', 'cuda:N'. Anything else (a typo such
    as 'gpu', another accelerator type, a CUDA device where there is none, an index past the
    last GPU) is a one-line ValueError naming the valid choices."""
    if isinstance(device, torch.device):
        dev = device
    elif not isinstance(device, str):
        raise ValueError(f"device must be a string ({DEVICES}), got {device!r}")
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"unknown device {device!r}; use {DEVICES}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(device)!r}; use {DEVICES}")
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise ValueError(f"unsupported device {str(device)!r}; use {DEVICES}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available here; "
                             f"use auto or cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {str(device)!r}: there is no such GPU here (CUDA devices: "
                             f"{', '.join(f'cuda:{i}' for i in range(count))})")
    return dev


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_usable(device: torch.device) -> bool:
    """Production paths use Triton on CUDA only; the interpreter (TRITON_INTERPRET=1) is for the
    kernel tests, which call the kernel modules directly."""
    return device.type == "cuda" and triton_available()


def engine_unavailable_reason(device: torch.device, multiscale: bool = True) -> str | None:
    """Why the engine backend cannot run a model (multiscale: its config's) on device, or None."""
    if not multiscale:
        return ("the engine samples next-scale models; a one-map model (multiscale=false) "
                "samples token by token on the eager backend")
    if device.type == "cuda" and not triton_available():
        return "the engine on CUDA needs triton: pip install 'timemar-engine[gpu]'"
    return None


def available_backends(device: torch.device, multiscale: bool = True) -> list[str]:
    return ["eager"] + ([] if engine_unavailable_reason(device, multiscale) else ["engine"])


def resolve_backend(backend: str, device: torch.device, multiscale: bool = True) -> str:
    """'auto' -> the fastest correct backend for device and the model (multiscale: its
    config's); unknown or unusable names are errors."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    reason = engine_unavailable_reason(device, multiscale)
    if backend == "auto":
        return "engine" if reason is None else "eager"
    if backend == "engine" and reason:
        raise ValueError(f"backend 'engine' cannot run this model on {device}: {reason}; "
                         f"available here: {', '.join(available_backends(device, multiscale))}")
    return backend


def cpu_streams() -> int:
    """Batches the CPU engine runs at once, one intra-op thread each: TIMEMAR_CPU_STREAMS, else
    torch's thread count (so the cores stay as busy as with one batch on all threads)."""
    env = os.environ.get("TIMEMAR_CPU_STREAMS")
    if env is not None:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"TIMEMAR_CPU_STREAMS must be a positive integer, got {env!r}")
        return int(env)
    return max(1, torch.get_num_threads())


def chunk_windows(device: torch.device) -> int:
    """Windows per random-stream chunk (see `engine.chunk_seed`): a constant per device type, so
    that the output of a seed is the same for any batch size and any number of processes."""
    return 4096 if device.type == "cuda" else 256


def decode_rows(device: torch.device) -> int | None:
    """Windows per decoder call inside one batch: on CPU, blocks of 512 keep the decoder's
    activations in cache and out of fresh pages (bench/test_bench_extension.py, `decode`); on CUDA
    the whole batch (None)."""
    return 512 if device.type == "cpu" else None


def engine_decoder(decoder: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The decoder the engine runs: on CPU its channels-last Conv2d twin (`fast_decoder.py`,
    measured faster there); elsewhere the module itself."""
    if device.type != "cpu":
        return decoder
    from .fast_decoder import ChannelsLastDecoder
    return ChannelsLastDecoder(decoder)


def distributed_device(device: str, local_rank: int) -> str:
    """The device of one process of a torchrun job: CUDA without an index means cuda:LOCAL_RANK."""
    dev = resolve_device(device)
    return f"cuda:{local_rank}" if dev.type == "cuda" and dev.index is None else str(dev)


def distributed_backend(device: torch.device) -> str:
    """torch.distributed backend for processes sampling on device: nccl on CUDA, gloo on CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def cuda_graphs_enabled() -> bool:
    """CUDA graphs in the engine; TIMEMAR_CUDA_GRAPHS=0 turns them off (debugging, profiling)."""
    return os.environ.get("TIMEMAR_CUDA_GRAPHS", "1") != "0"


def bmm_cached_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         kv_len: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """The CPU engine's cached attention for contiguous caches (B, H, L, D): two batched GEMMs
    and an in-place softmax (faster than SDPA's flash kernel at these tiny lengths, measured)."""
    B, H, s, D = q.shape
    qs = torch.empty(B, H, s, D, dtype=q.dtype, device=q.device)
    torch.mul(q, D ** -0.5, out=qs)
    k = k_cache[:, :, :kv_len].reshape(B * H, kv_len, D)
    v = v_cache[:, :, :kv_len].reshape(B * H, kv_len, D)
    scores = torch.bmm(qs.view(B * H, s, D), k.transpose(1, 2))
    torch.softmax(scores, -1, out=scores)
    y = torch.bmm(scores, v).view(B, H, s, D)
    return y if out is None else out.copy_(y)


def cached_attention_for(device: torch.device) -> Callable:
    """The engine's cached attention: the Triton kernel on CUDA, two bmm's elsewhere. Both take
    (q, k_cache, v_cache, kv_len, out=)."""
    if _triton_usable(device):
        from .kernels.attention import cached_attention
        return cached_attention
    return bmm_cached_attention


@torch.no_grad()
def nearest_code(x: torch.Tensor, codebook: torch.Tensor, **kw):
    """Nearest-code indices of rows x (N, D) (plus codes / residual with the keywords of
    `kernels.codebook`): the Triton kernel on CUDA, else the chunked torch path. Both use
    |e|^2 - 2 x.e in fp32, give ties to the lowest index and never hold the N x V matrix."""
    from .kernels import codebook as lookup
    if isinstance(x, torch.Tensor) and _triton_usable(x.device):
        return lookup.nearest_code_triton(x, codebook, **kw)
    return lookup.nearest_code_cpu(x, codebook, **kw)


PRECISIONS = ("auto", "fp32", "int8")
# int8 linear layers pay off from this transformer width on (bench/test_bench_sampling.py, CPU:
# d_model 256 (`s`) 1.75x the fp32 engine, d_model 96 (`xs`) 0.94x: quantizing rows costs more
# than the int8 product saves on narrow layers)
INT8_MIN_WIDTH = 256


def resolve_precision(precision: str, device: torch.device, width: int = INT8_MIN_WIDTH) -> str:
    """The engine transformer's arithmetic: "auto" is bf16 on CUDA, and int8 linear layers
    (`int8_linear.py`) on CPU with the C++ extension and int8 dot products (`cpu_has_vnni`)
    for models at least INT8_MIN_WIDTH wide (`width`, the d_model), else fp32; "fp32"
    everywhere; "int8" on CPU with the extension. Anything else is one error naming the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    from . import extension
    cpu_int8 = device.type == "cpu" and extension_ops(device) is not None
    if precision == "int8" and not cpu_int8:
        why = ("it runs on CPU only" if device.type != "cpu" else
               f"it needs the C++ extension ({extension.unavailable_reason()})")
        raise ValueError(f"precision 'int8' is not available here: {why}; use fp32 or auto")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16"
        return "int8" if cpu_int8 and cpu_has_vnni() and width >= INT8_MIN_WIDTH else "fp32"
    return precision


def cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI or AVX-VNNI), which
    `torch._int_mm` needs to be fast: without them it measured 1.3 GOP/s against 77 GFLOP/s for
    fp32 (one thread, an AVX2-only EPYC VM), so int8 layers would be ~60x slower there."""
    return getattr(torch.cpu, "_is_vnni_supported", lambda: False)()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere PyTorch
    emulates bf16 GEMMs, far slower than fp32 (1 vs 150 GFLOP/s on an AVX2-only 2-core VM)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_train_precision(precision: str, device: torch.device) -> str:
    """Stage 2's arithmetic: "auto" is bf16 on CUDA devices that support it and on CPUs with
    native bf16 (stage 2 on an AVX512-BF16 CPU: 0.39 vs 0.63 s a step, preset s,
    bench/results/experiments_T24.md), else fp32; "fp32" and "bf16" are taken as given."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown training precision {precision!r}; choose from auto, fp32, bf16")
    return precision


def train_autocast(precision: str, device: torch.device):
    """The context a training forward runs in: bf16 autocast (weights, gradients and optimizer
    stay fp32) or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def extension_ops(device: torch.device):
    """The C++/CUDA ops (`extension.py`: interp_accumulate, decode_epilogue) for device, or None
    for the PyTorch path, said once per process on stderr with the reason."""
    from . import extension
    if extension.available(device):
        return extension
    if extension.load() is not None:  # loaded, but built without CUDA kernels
        extension.say_once("the extension was built without CUDA kernels (no nvcc at build "
                           "time): the engine on CUDA uses the PyTorch ops")
    else:
        extension.say_once("the engine's interpolate-accumulate and decode epilogue use the "
                           f"PyTorch path: {extension.unavailable_reason()}")
    return None


def _nvtx():
    if not torch.cuda.is_available() or importlib.util.find_spec("nvtx") is None:
        return None
    import nvtx
    return nvtx


_NVTX = _nvtx()


def nvtx_range(name: str):
    """An NVTX range (visible in Nsight Systems) when the nvtx package is installed and CUDA is
    present; a free no-op otherwise."""
    return _NVTX.annotate(name, domain="timemar") if _NVTX else contextlib.nullcontext()
