"""The C++/CUDA extension (`timemar_engine._C`, sources in csrc/): loading, and its ops beside
the eager references they replace.

- `interp_accumulate(f_hat, codebook, idx, weight, bias, alpha, next_size)`: for scale k,
  f_hat += phi_k(linear_up(codebook[idx], T')) in place, and return area_down(f_hat, next_size),
  the next scale's transformer input ((B, Cz, 0) when next_size is 0);
- `decode_epilogue(trend, coarse, fine, span, lo)`: the decoder's component sum, clamp to [-1, 1]
  and, with span / lo, the inverse min-max scaling, as (B, T, C) float32;
- `quantize_rows` / `dequant_rows` (CPU only): the two ends of an int8 linear layer
  (`int8_linear.py`, with its float64 reference).

`load()` returns the module or None; `unavailable_reason()` says why in one line (not built, failed
to load, or turned off with TIMEMAR_EXTENSION=0). Ops are called through torch.ops.timemar.* so
they work under torch.compile (fake implementations below) and CUDA graphs.
"""
from __future__ import annotations

import functools
import os
import sys

import torch

from .decompose import area_resize, linear_resize

NOT_BUILT = ("the C++ extension is not built (pip built the package without torch in its build "
             "environment, or without a C++ compiler); reinstall with "
             "`pip install --no-build-isolation .` after torch")


@functools.cache
def _load() -> tuple[object | None, str | None]:
    if os.environ.get("TIMEMAR_EXTENSION", "1") == "0":
        return None, "the C++ extension is turned off (TIMEMAR_EXTENSION=0)"
    try:
        from . import _C
    except ModuleNotFoundError:
        return None, NOT_BUILT
    except (ImportError, OSError) as e:  # built for another torch / Python, missing library, ...
        return None, f"the C++ extension failed to load ({str(e).splitlines()[0]})"
    _register_fakes()
    return _C, None


def load():
    """The extension module, or None when it cannot be used here."""
    return _load()[0]


def ops():
    """torch.ops.timemar, loading the extension first; a RuntimeError when it is unavailable."""
    if load() is None:
        raise RuntimeError(unavailable_reason())
    return torch.ops.timemar


def unavailable_reason() -> str | None:
    return _load()[1]


def available(device: torch.device) -> bool:
    """Whether the ops run on tensors of this device type."""
    ext = load()
    if ext is None:
        return False
    return device.type == "cpu" or (device.type == "cuda" and ext.cuda_compiled())


@functools.cache
def say_once(message: str) -> None:
    """One line on stderr, once per process (why a path falls back to PyTorch)."""
    print(f"timemar-engine: {message}", file=sys.stderr)


def status() -> dict:
    """What `timemar-engine info` reports about the extension."""
    ext = load()
    if ext is None:
        return {"loaded": False, "reason": unavailable_reason()}
    return {"loaded": True, "path": ext.__file__, "cpu_ops": True,
            "cuda_ops": bool(ext.cuda_compiled()), "cuda_devices_seen": int(ext.cuda_device_count())}


def _register_fakes() -> None:
    @torch.library.register_fake("timemar::interp_accumulate")
    def _(f_hat, codebook, idx, weight, bias, alpha, next_size):
        return f_hat.new_empty(f_hat.shape[0], f_hat.shape[1], next_size)

    @torch.library.register_fake("timemar::quantize_rows")
    def _(x, weight, bias, eps, q, scale):
        return None

    @torch.library.register_fake("timemar::dequant_rows")
    def _(acc, x_scale, w_scale, bias, out, accumulate):
        return None

    @torch.library.register_fake("timemar::decode_epilogue")
    def _(trend, coarse, fine, span, lo):
        return trend.new_empty(trend.shape[0], trend.shape[2], trend.shape[1])


# --- interpolate-accumulate -------------------------------------------------------------------
def interp_accumulate(f_hat: torch.Tensor, codebook: torch.Tensor, idx: torch.Tensor,
                      weight: torch.Tensor, bias: torch.Tensor, alpha: float,
                      next_size: int) -> torch.Tensor:
    """The fused op (f_hat updated in place); see the module docstring."""
    return ops().interp_accumulate(f_hat, codebook, idx, weight, bias, alpha, next_size)


def interp_accumulate_reference(f_hat: torch.Tensor, codebook: torch.Tensor, idx: torch.Tensor,
                                weight: torch.Tensor, bias: torch.Tensor, alpha: float,
                                next_size: int) -> torch.Tensor:
    """The eager ops it replaces, as `MultiScaleQuantizer.embed` + `area_resize` compute them."""
    h = linear_resize(codebook[idx].transpose(1, 2), f_hat.shape[-1])
    h = h.mul(1 - alpha) + torch.nn.functional.conv1d(h, weight, bias, padding=1).mul_(alpha)
    f_hat.add_(h)
    if next_size == 0:
        return f_hat.new_empty(f_hat.shape[0], f_hat.shape[1], 0)
    return area_resize(f_hat, next_size).clone()


# --- decode epilogue --------------------------------------------------------------------------
def decode_epilogue(trend: torch.Tensor, coarse: torch.Tensor, fine: torch.Tensor,
                    span: torch.Tensor | None = None, lo: torch.Tensor | None = None) -> torch.Tensor:
    """The fused op; see the module docstring."""
    return ops().decode_epilogue(trend, coarse, fine, span, lo)


def decode_epilogue_reference(trend: torch.Tensor, coarse: torch.Tensor, fine: torch.Tensor,
                              span: torch.Tensor | None = None,
                              lo: torch.Tensor | None = None) -> torch.Tensor:
    """What `DualPathVQVAE.decode`, the clamp and `Engine._to_scale` compute (float64 scaling,
    then float32, as numpy does it)."""
    x = (trend + coarse + fine).transpose(1, 2).clamp(-1, 1)
    if span is None:
        return x.contiguous()
    u = (x + 1) / 2
    data = u.double() * span.double() + lo.double()
    return torch.where(span.double() > 0, data, lo.double().expand_as(data)).float()


# --- int8 linear layers (CPU) -----------------------------------------------------------------
def quantize_rows(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                  eps: float, q: torch.Tensor, scale: torch.Tensor) -> None:
    """Rows of x (layer-normed first with weight / bias) to int8 q and row scales (`int8_linear`)."""
    ops().quantize_rows(x, weight, bias, eps, q, scale)


def dequant_rows(acc: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
                 bias: torch.Tensor, out: torch.Tensor, accumulate: bool) -> None:
    """out (+)= acc * x_scale[:, None] * w_scale + bias (`int8_linear`)."""
    ops().dequant_rows(acc, x_scale, w_scale, bias, out, accumulate)
