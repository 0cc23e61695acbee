"""int8 linear layers for the engine's transformer on CPU.

Weights: symmetric int8 per output channel, quantized once. Activations: symmetric int8 per row,
quantized on the fly by the extension's `quantize_rows` (fused with the LayerNorm before qkv and
fc1). The product is `torch._int_mm` (int8 x int8 -> exact int32), and the extension's
`dequant_rows` scales it back, adds the bias and writes it or adds it to the residual stream, in
one pass. The attention, the GELU, the logits head and the sampling stay in float32.

In a one-off timing on one core of the (VNNI-capable) development VM, `torch._int_mm` ran 3-5x the
fp32 GEMM rate at the engine's shapes; bench/test_bench_sampling.py measures the end-to-end effect. The result differs from fp32 by the quantization error (about
1% of a row's largest value per activation), so tokens are not those of the fp32 path: the
distribution is what is checked (tests/test_fast_sampling.py, discriminative score).
"""
from __future__ import annotations

import torch
from torch import nn


class Int8Weight:
    """A Linear's weight as int8 (K, N) with per-column scales, and its float32 bias."""

    def __init__(self, linear: nn.Linear):
        w = linear.weight.detach().float()  # (N, K)
        amax = w.abs().amax(1)
        self.scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).contiguous()
        self.q = torch.round(w / self.scale[:, None]).clamp_(-127, 127).to(torch.int8).t()
        self.bias = (linear.bias.detach().float() if linear.bias is not None
                     else torch.zeros(w.shape[0])).contiguous()

    def dequantized(self) -> torch.Tensor:
        """The weight (N, K) float32 the int8 layer computes with (for references)."""
        return self.q.t().float() * self.scale[:, None]


class Int8Scratch:
    """int8 activations, their row scales and the int32 products of up to `rows` rows of width
    up to `width`, allocated once; `take` hands out (rows, cols) views."""

    def __init__(self, rows: int, width: int, device: torch.device):
        self.q = torch.empty(rows * width, dtype=torch.int8, device=device)
        self.acc = torch.empty(rows * width, dtype=torch.int32, device=device)
        self.scale = torch.empty(rows, device=device)

    def take(self, rows: int, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.q[:rows * k].view(rows, k), self.scale[:rows],
                self.acc[:rows * n].view(rows, n))


def int8_linear(ops, x: torch.Tensor, w: Int8Weight, out: torch.Tensor, scratch: Int8Scratch, *,
                accumulate: bool = False, norm: tuple | None = None) -> torch.Tensor:
    """out = linear(x) (or out += it, accumulate) in int8; norm = (weight, bias, eps) of a
    LayerNorm applied to x first. x (M, K) and out (M, N) float32 with contiguous rows."""
    M, K = x.shape
    q, s, acc = scratch.take(M, K, w.q.shape[1])
    ln_w, ln_b, eps = norm if norm is not None else (None, None, 0.0)
    ops.quantize_rows(x, ln_w, ln_b, eps, q, s)
    torch._int_mm(q, w.q, out=acc)
    ops.dequant_rows(acc, s, w.scale, w.bias, out, accumulate)
    return out


def int8_linear_reference(x: torch.Tensor, w: Int8Weight, norm: tuple | None = None) -> torch.Tensor:
    """float64 twin of `int8_linear` (without accumulate): the same row quantization, exact."""
    x = x.double()
    if norm is not None:
        x = torch.nn.functional.layer_norm(x, x.shape[-1:], norm[0].double(), norm[1].double(),
                                           norm[2])
    amax = x.abs().amax(1, keepdim=True)
    s = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    q = torch.round(x / s).clamp_(-127, 127)
    return (q @ w.q.double()) * s * w.scale.double() + w.bias.double()
