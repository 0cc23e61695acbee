"""Trend / coarse seasonal / fine seasonal decomposition (x == trend + coarse + fine)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def scaled_kernels(kernels: tuple[int, ...], seq_len: int) -> tuple[int, ...]:
    """Odd moving-average kernel sizes, given at T = 24 and scaled with T."""
    out = []
    for k in kernels:
        k = max(1, round(k * seq_len / 24))
        out.append(min(k | 1, seq_len if seq_len % 2 else seq_len - 1))
    return tuple(out)


def moving_average(x: torch.Tensor, k: int) -> torch.Tensor:
    """Centered moving average over time of (B, C, T) with replicate padding."""
    if k == 1:
        return x
    padded = F.pad(x, (k // 2, k // 2), mode="replicate")
    return F.avg_pool1d(padded, k, stride=1)


def area_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area (average) interpolation of (B, C, L) to length size."""
    return x if x.shape[-1] == size else F.adaptive_avg_pool1d(x, size)


def linear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Linear interpolation of (B, C, L) to length size (half-pixel centres)."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=size, mode="linear", align_corners=False)


class Decomposition(nn.Module):
    """Mixture-of-moving-averages trend, then a coarse/fine split of the seasonal part."""

    def __init__(self, seq_len: int, kernels: tuple[int, ...], coarse_factor: int):
        super().__init__()
        self.kernels = scaled_kernels(kernels, seq_len)
        self.coarse_len = max(1, seq_len // coarse_factor)
        self.mix = nn.Parameter(torch.zeros(len(self.kernels)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, T) -> trend, coarse seasonal, fine seasonal, each (B, C, T)."""
        w = torch.softmax(self.mix, 0)
        trend = sum(w[i] * moving_average(x, k) for i, k in enumerate(self.kernels))
        seasonal = x - trend
        coarse = linear_resize(area_resize(seasonal, self.coarse_len), x.shape[-1])
        fine = seasonal - coarse
        return trend, coarse, fine
