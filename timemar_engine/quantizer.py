"""Multi-scale residual quantization with one shared codebook (next-scale style)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import backends
from .decompose import area_resize, linear_resize


class Phi(nn.Module):
    """phi(h) = (1 - a) h + a conv(h): a light refinement after up-interpolation."""

    def __init__(self, dim: int, alpha: float):
        super().__init__()
        self.alpha = alpha
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.alpha) + self.conv(h).mul_(self.alpha)


def phi_index(k: int, n_scales: int, n_phi: int) -> int:
    """The shared phi used by scale k: the one whose tick is nearest to k / (K - 1)."""
    if n_phi == 1 or n_scales == 1:
        return 0
    ticks = torch.linspace(1 / (2 * n_phi), 1 - 1 / (2 * n_phi), n_phi)
    return int((ticks - k / (n_scales - 1)).abs().argmin())


def nearest_code(r: torch.Tensor, codebook: torch.Tensor, cosine: bool) -> torch.Tensor:
    """Index of the nearest code for each row of r (M, Cz); ties go to the lowest index.
    L2: the fused lookup of `backends.nearest_code` (no M x V matrix)."""
    if cosine:
        return (F.normalize(r, dim=-1) @ F.normalize(codebook, dim=-1).T).argmax(-1)
    return backends.nearest_code(r, codebook)


class MultiScaleQuantizer(nn.Module):
    def __init__(self, scales: tuple[int, ...], dim: int, size: int, n_phi: int, alpha: float,
                 beta: float, cosine: bool, causal_scales: int = 0):
        super().__init__()
        self.scales, self.dim, self.size = tuple(scales), dim, size
        self.causal_scales = causal_scales
        self.beta, self.cosine = beta, cosine
        self.codebook = nn.Embedding(size, dim)
        nn.init.uniform_(self.codebook.weight, -1 / size, 1 / size)
        n_phi = min(n_phi, len(scales))
        self.phis = nn.ModuleList(Phi(dim, alpha) for _ in range(n_phi))
        self.phi_of_scale = [phi_index(k, len(scales), n_phi) for k in range(len(scales))]
        self.register_buffer("usage", torch.zeros(size), persistent=False)
        self.recent_residuals = torch.zeros(0, dim)

    @property
    def latent_len(self) -> int:
        return self.scales[-1]

    def embed(self, idx: torch.Tensor, k: int) -> torch.Tensor:
        """h_k = phi_k(up(codebook[idx])) for idx (B, s_k) -> (B, Cz, T')."""
        codes = self.codebook(idx).transpose(1, 2)
        return self.phis[self.phi_of_scale[k]](linear_resize(codes, self.latent_len))

    def lookup(self, r: torch.Tensor) -> torch.Tensor:
        """Nearest-code indices of r (B, Cz, s) -> (B, s)."""
        B, C, s = r.shape
        return nearest_code(r.transpose(1, 2).reshape(-1, C), self.codebook.weight,
                            self.cosine).view(B, s)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Quantize f (B, Cz, T'): straight-through f_hat, per-scale indices, VQ loss."""
        f_rest, f_hat = f.detach().clone(), torch.zeros_like(f)
        indices, loss, rows = [], f.new_zeros(()), []
        for k, s in enumerate(self.scales):
            r = area_resize(f_rest, s)
            idx = self.lookup(r)
            rows.append(r.transpose(1, 2).reshape(-1, self.dim))
            h = self.embed(idx, k)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            loss = loss + F.mse_loss(f_hat, f.detach()) + self.beta * F.mse_loss(f_hat.detach(), f)
            indices.append(idx)
            if self.training:
                self.usage.index_add_(0, idx.flatten(), torch.ones_like(idx.flatten(), dtype=f.dtype))
        self.recent_residuals = torch.cat(rows)
        f_hat = f + (f_hat - f).detach()  # straight-through: decoder gradient reaches the encoder
        return f_hat, indices, loss / len(self.scales)

    @torch.no_grad()
    def encode(self, f: torch.Tensor) -> list[torch.Tensor]:
        """Token maps of f: a list of K index tensors (B, s_k)."""
        f_rest, indices = f.clone(), []
        for k, s in enumerate(self.scales):
            idx = self.lookup(area_resize(f_rest, s))
            f_rest -= self.embed(idx, k)
            indices.append(idx)
        return indices

    def decode_indices(self, indices: list[torch.Tensor]) -> torch.Tensor:
        """f_hat from token maps: sum of phi_k(up(codebook[idx_k]))."""
        return sum(self.embed(idx, k) for k, idx in enumerate(indices))

    def gpt_inputs(self, coarse: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """Transformer inputs from the coarser maps' reconstruction at a scale's positions
        (B, s, Cz); with causal scales, each position also gets the code of the token before it
        in its own map (`previous`, B, s, Cz; zeros for the first token and for whole scales)."""
        if not self.causal_scales:
            return coarse
        return torch.cat([coarse, torch.zeros_like(coarse) if previous is None else previous], -1)

    def previous_codes(self, idx: torch.Tensor) -> torch.Tensor:
        """For each token of a map idx (B, s): the code of the token before it, zeros first."""
        codes = self.codebook(idx[:, :-1])
        return torch.cat([codes.new_zeros(codes.shape[0], 1, self.dim), codes], 1)

    def teacher_inputs(self, indices: list[torch.Tensor]) -> torch.Tensor:
        """Transformer inputs for scales 2..K: area_down(f_hat_{<k}, s_k) -> (B, L - s_1, Cz),
        with `gpt_inputs`' previous codes at the causal scales; for a single map, predicted
        token by token: the codes of tokens 1..T'-1 (B, T' - 1, Cz)."""
        if len(self.scales) == 1:
            return self.codebook(indices[0][:, :-1])
        K, f_hat, parts = len(self.scales), None, []
        for k in range(K - 1):
            h = self.embed(indices[k], k)
            f_hat = h if f_hat is None else f_hat + h
            coarse = area_resize(f_hat, self.scales[k + 1]).transpose(1, 2)
            causal = k + 1 >= K - self.causal_scales
            parts.append(self.gpt_inputs(coarse, self.previous_codes(indices[k + 1])
                                         if causal else None))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def restart_dead_codes(self, min_usage: float = 1.0) -> int:
        """Move codes used fewer than min_usage times since the last call onto recent residuals."""
        residuals = self.recent_residuals
        dead = (self.usage < min_usage).nonzero().flatten()
        if len(dead) and len(residuals):
            pick = torch.randint(len(residuals), (len(dead),), device=residuals.device)
            noise = 0.01 * residuals.std() * torch.randn_like(residuals[pick])
            self.codebook.weight[dead] = residuals[pick] + noise
        self.usage.zero_()
        return len(dead)


def perplexity(idx: torch.Tensor, size: int) -> tuple[float, float]:
    """Codebook perplexity and fraction of codes used by a set of indices."""
    counts = torch.bincount(idx.flatten(), minlength=size).double()
    p = counts / counts.sum()
    ent = -(p[p > 0] * p[p > 0].log()).sum()
    return float(ent.exp()), float((counts > 0).double().mean())
