"""Stage 1: the dual-path VQ-VAE (coarse + fine encoders, shared multi-scale codebook, guided decoder)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .decompose import Decomposition
from .quantizer import MultiScaleQuantizer


class ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.GroupNorm(1, dim), nn.SiLU(), nn.Conv1d(dim, dim, 3, padding=1),
                                 nn.GroupNorm(1, dim), nn.SiLU(), nn.Conv1d(dim, dim, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def conv_stack(c_in: int, dim: int, blocks: int, n_down: int) -> nn.Sequential:
    """Conv encoder: project, residual blocks, then n_down stride-2 stages (T -> T / 2^n_down)."""
    layers: list[nn.Module] = [nn.Conv1d(c_in, dim, 3, padding=1)]
    layers += [ResBlock(dim) for _ in range(blocks)]
    for _ in range(n_down):
        layers += [nn.Conv1d(dim, dim, 4, stride=2, padding=1), ResBlock(dim)]
    return nn.Sequential(*layers)


def upsample_stack(dim: int, blocks: int, n_up: int) -> nn.Sequential:
    """Conv decoder trunk: residual blocks, then n_up nearest x2 + conv stages (T' -> T)."""
    layers: list[nn.Module] = [ResBlock(dim) for _ in range(blocks)]
    for _ in range(n_up):
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv1d(dim, dim, 3, padding=1),
                   ResBlock(dim)]
    return nn.Sequential(*layers)


class CrossAttention(nn.Module):
    """Pre-norm cross-attention with a residual: queries (B, Lq, D) attend to context (B, Lk, D)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(kv)
        return q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]


class FineEncoder(nn.Module):
    """Conv path on the fine seasonal part plus cross-attention to its rFFT bins."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden
        self.conv = conv_stack(cfg.channels, h, cfg.enc_blocks, cfg.n_downsample)
        n_bins = cfg.seq_len // 2 + 1
        self.bin_embed = nn.Linear(2 * cfg.channels, h)
        self.bin_pos = nn.Parameter(torch.randn(1, n_bins, h) * 0.02)
        self.freq_attn = CrossAttention(h, cfg.attn_heads)

    def forward(self, fine: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft(fine, dim=-1, norm="ortho")  # (B, C, bins)
        bins = self.bin_embed(torch.cat([spec.real, spec.imag], 1).transpose(1, 2)) + self.bin_pos
        h = self.conv(fine).transpose(1, 2)  # (B, T', H)
        return self.freq_attn(h, bins).transpose(1, 2)


class Decoder(nn.Module):
    """Coarse path emits trend and coarse seasonal; the fine path attends to the coarse prior.

    Ablations (ModelConfig): guidance=False drops the fine path's attention to the prior;
    decomposition=False keeps one path, whose output (returned as the trend, with zero seasonal
    parts) is the whole window."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, c = cfg.hidden, cfg.channels
        self.coarse_in = nn.Conv1d(cfg.code_dim, h, 3, padding=1)
        self.coarse = upsample_stack(h, cfg.enc_blocks, cfg.n_downsample)
        self.trend_out = nn.Conv1d(h, c, 1)
        self.split = cfg.decomposition
        if not self.split:
            return
        self.coarse_out = nn.Conv1d(h, c, 1)
        self.fine_in = nn.Conv1d(cfg.code_dim, h, 3, padding=1)
        self.fine = upsample_stack(h, cfg.enc_blocks, cfg.n_downsample)
        self.guided = cfg.guidance
        if self.guided:
            self.prior_embed = nn.Conv1d(c, h, 3, padding=1)
            self.guide = CrossAttention(h, cfg.attn_heads)
        self.fine_out = nn.Sequential(ResBlock(h), nn.Conv1d(h, c, 1))

    def forward(self, f_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hc = self.coarse(self.coarse_in(f_hat))
        trend = self.trend_out(hc)
        if not self.split:
            zero = torch.zeros_like(trend)
            return trend, zero, zero
        coarse = self.coarse_out(hc)
        hf = self.fine(self.fine_in(f_hat))
        if self.guided:
            prior = (hc + self.prior_embed(coarse)).transpose(1, 2)
            hf = self.guide(hf.transpose(1, 2), prior).transpose(1, 2)
        return trend, coarse, self.fine_out(hf)


@dataclass
class VQOutput:
    x_hat: torch.Tensor
    indices: list[torch.Tensor]
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]


def amplitude(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.rfft(x, dim=-1, norm="ortho").abs()


class DualPathVQVAE(nn.Module):
    """x (B, T, C) in [-1, 1] -> K token maps -> reconstruction. With cfg.decomposition False
    (the ablation) one conv path encodes the window itself."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        if cfg.decomposition:  # built in the order of the parameters' registration before
            self.decompose = Decomposition(cfg.seq_len, cfg.trend_kernels, cfg.coarse_factor)
        self.coarse_enc = conv_stack(cfg.channels, h, cfg.enc_blocks, cfg.n_downsample)
        if cfg.decomposition:
            self.path_embed = nn.Parameter(torch.zeros(2, h, 1))  # trend / coarse seasonal
            self.fine_enc = FineEncoder(cfg)
        self.fuse = nn.Conv1d((3 if cfg.decomposition else 1) * h, cfg.code_dim, 1)
        self.quant = MultiScaleQuantizer(cfg.scales, cfg.code_dim, cfg.codebook_size, cfg.phi_convs,
                                         cfg.phi_alpha, cfg.beta, cfg.cosine_codes,
                                         cfg.causal_scales)
        self.decoder = Decoder(cfg)

    def _coarse_path(self, x: torch.Tensor, path: int) -> torch.Tensor:
        stem, rest = self.coarse_enc[0], self.coarse_enc[1:]
        return rest(stem(x) + self.path_embed[path])

    def _encode(self, xc: torch.Tensor) -> tuple[tuple[torch.Tensor, ...] | None, torch.Tensor]:
        """Components of xc (B, C, T) (None without decomposition) and the fused latent f
        (B, Cz, T')."""
        if not self.cfg.decomposition:
            return None, self.fuse(self.coarse_enc(xc))
        trend, coarse, fine = parts = self.decompose(xc)
        z = torch.cat([self._coarse_path(trend, 0), self._coarse_path(coarse, 1),
                       self.fine_enc(fine)], 1)
        return parts, self.fuse(z)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """Fused latent f (B, Cz, T') of windows x (B, T, C)."""
        return self._encode(x.transpose(1, 2))[1]

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, Cz, T') -> x_hat (B, T, C): the sum of the three decoded components."""
        trend, coarse, fine = self.decoder(f_hat)
        return (trend + coarse + fine).transpose(1, 2)

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.quant.encode(self.latent(x))

    def forward(self, x: torch.Tensor) -> VQOutput:
        cfg = self.cfg
        xc = x.transpose(1, 2)
        parts, f = self._encode(xc)
        f_hat, indices, vq_loss = self.quant(f)
        d_trend, d_coarse, d_fine = self.decoder(f_hat)
        x_hat = d_trend + d_coarse + d_fine
        terms = {"recon": F.mse_loss(x_hat, xc)}
        loss = terms["recon"]
        if parts is not None:  # each decoded component against the decomposition's
            terms["components"] = sum(F.mse_loss(a, b.detach()) for a, b in
                                      zip((d_trend, d_coarse, d_fine), parts)) / 3
            loss = loss + cfg.w_components * terms["components"]
        terms |= {"fft": F.l1_loss(amplitude(x_hat), amplitude(xc)), "vq": vq_loss}
        loss = loss + cfg.w_fft * terms["fft"] + terms["vq"]
        return VQOutput(x_hat.transpose(1, 2), indices, loss, terms)
