"""The decoder for inference on CPU: the layers and weights of `vqvae.Decoder`, computed with every
Conv1d as a Conv2d of height 1 in channels-last memory format.

oneDNN ran the decoder's small 1-D convolutions (64 channels, 12-24 steps) about 2-3x faster as
channels-last Conv2d than as Conv1d on the 2-core CPU (a one-off timing; the decode stage as a
whole is measured in bench/test_bench_extension.py), and channels-last (B, H, 1, T) memory is (B, T, H): the cross-attention's layout with no transpose
copies, and (B, T, C) windows straight out of the last convolutions. The same function up to
float rounding (tests/test_fast_decoder.py)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .vqvae import Decoder, ResBlock


def _as_conv2d(conv: nn.Conv1d) -> nn.Conv2d:
    """A Conv2d (kernel 1 x k) with conv's weights, channels-last."""
    out = nn.Conv2d(conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]),
                    stride=(1, conv.stride[0]), padding=(0, conv.padding[0]),
                    bias=conv.bias is not None, dtype=conv.weight.dtype,
                    device=conv.weight.device)
    with torch.no_grad():
        out.weight.copy_(conv.weight.unsqueeze(2))
        if conv.bias is not None:
            out.bias.copy_(conv.bias)
    return out.to(memory_format=torch.channels_last)


class _ResBlockInPlace(nn.Module):
    """`ResBlock` whose SiLUs overwrite the GroupNorm outputs and whose residual is added into the
    last conv's output: the same numbers, three fresh activation tensors fewer per block."""

    def __init__(self, block: ResBlock):
        super().__init__()
        self.net = block.net
        for i, layer in enumerate(self.net):
            if isinstance(layer, nn.SiLU):  # every SiLU follows a GroupNorm (a fresh tensor)
                self.net[i] = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).add_(x)


def _convert(module: nn.Module) -> None:
    """Replace, in place, every Conv1d by its Conv2d twin, every Upsample by one along width and
    every ResBlock by its in-place twin."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv1d):
            setattr(module, name, _as_conv2d(child))
        elif isinstance(child, nn.Upsample):
            setattr(module, name, nn.Upsample(scale_factor=(1, child.scale_factor),
                                              mode=child.mode))
        else:
            _convert(child)
            if isinstance(child, ResBlock):
                setattr(module, name, _ResBlockInPlace(child))


def _rows(x: torch.Tensor) -> torch.Tensor:
    """Channels-last (B, H, 1, T) -> (B, T, H), a view."""
    return x.squeeze(2).transpose(1, 2)


def _image(x: torch.Tensor) -> torch.Tensor:
    """(B, T, H) contiguous -> channels-last (B, H, 1, T), a view."""
    return x.transpose(1, 2).unsqueeze(2)


class ChannelsLastDecoder(nn.Module):
    """`decoder(f_hat)` as `Decoder.forward`: (trend, coarse, fine), each (B, C, T) with time-major
    strides (their transposes (B, T, C) are contiguous)."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.d = copy.deepcopy(decoder).eval()
        _convert(self.d)
        self.d.requires_grad_(False)

    def forward(self, f_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.d
        x = f_hat.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        hc = d.coarse(d.coarse_in(x))
        trend = d.trend_out(hc).squeeze(2)
        if not d.split:
            zero = torch.zeros_like(trend)
            return trend, zero, zero
        coarse = d.coarse_out(hc)
        hf = d.fine(d.fine_in(x))
        if d.guided:
            hf = _image(d.guide(_rows(hf), _rows(hc + d.prior_embed(coarse))).contiguous())
        return trend, coarse.squeeze(2), d.fine_out(hf).squeeze(2)


def decode_sum(decoder: nn.Module, f_hat: torch.Tensor) -> torch.Tensor:
    """The windows (B, T, C) in model scale, clamped to [-1, 1], without the extension."""
    trend, coarse, fine = decoder(f_hat)
    return (trend + coarse + fine).transpose(1, 2).clamp_(-1, 1)
