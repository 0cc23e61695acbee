"""What the stages train on and how they are scored: windows in model scale, the stage-2 token
(and latent) tables, per-scale cross-entropy and the end-of-stage reports."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .data import WindowSet
from .model import TimeMAR
from .quantizer import perplexity
# stage reports score at most this many (evenly spaced) windows; the stage-2 one costs a full
# transformer pass per window (about 20 s for 4096 windows of preset s on 2 cores)
REPORT_WINDOWS = {1: 4096, 2: 1024}


def to_model_scale(windows_unit: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(windows_unit, dtype=np.float32)) * 2 - 1


def model_batch(windows: WindowSet, idx, device) -> torch.Tensor:
    """Windows idx of the set in model scale [-1, 1], on device."""
    return to_model_scale(windows.gather(np.asarray(idx))).to(device)


def report_indices(n: int, limit: int) -> np.ndarray:
    """All n windows, or `limit` evenly spaced ones."""
    return np.arange(n) if n <= limit else np.linspace(0, n - 1, limit).round().astype(np.int64)


@torch.no_grad()
def stage1_report(model: TimeMAR, windows: WindowSet, device, batch: int = 1024) -> dict:
    """Reconstruction MSE (model scale) and per-scale codebook perplexity / usage."""
    vq = model.vqvae.eval()
    idx = report_indices(len(windows), REPORT_WINDOWS[1])
    se, count, idx_all = 0.0, 0, [[] for _ in model.cfg.scales]
    for i in range(0, len(idx), batch):
        x = model_batch(windows, idx[i:i + batch], device)
        indices = vq.quant.encode(vq.latent(x))
        x_hat = vq.decode(vq.quant.decode_indices(indices))
        se, count = se + float(((x_hat - x) ** 2).sum()), count + x.numel()
        for k, ix in enumerate(indices):
            idx_all[k].append(ix.cpu())
    stats = [perplexity(torch.cat(v), model.cfg.codebook_size) for v in idx_all]
    return {"recon_mse": se / count, "windows": len(idx),
            "perplexity": [round(p, 2) for p, _ in stats],
            "usage": [round(u, 3) for _, u in stats]}


@torch.no_grad()
def tokenize(model: TimeMAR, data: torch.Tensor, device, batch: int = 1024) -> torch.Tensor:
    """Model-scale windows (N, T, C) as flat token sequences (N, L)."""
    vq = model.vqvae.eval()
    out = [torch.cat(vq.tokenize(data[i:i + batch].to(device)), 1).cpu()
           for i in range(0, len(data), batch)]
    return torch.cat(out)


class Tokens:
    """Stage-2 targets: the token sequences (L,) of windows by index.

    When the stage draws at least as many windows as the set holds, all are tokenized once into
    an int16 table (in fixed chunks, so the table is the same in every run); otherwise each batch
    is tokenized when drawn, so neither time nor memory grows with the series beyond what the
    stage uses."""

    def __init__(self, model: TimeMAR, windows: WindowSet, device, draws: int | None):
        """draws: how many windows the stage will draw (None: not known in advance)."""
        self.model, self.windows, self.device = model, windows, device
        n, self.table = len(windows), None
        if draws is None or n <= draws:
            self.table = torch.cat([self._compute(np.arange(i, min(i + 1024, n)))
                                    for i in range(0, n, 1024)]).to(torch.int16)

    @torch.no_grad()
    def _compute(self, idx: np.ndarray) -> torch.Tensor:
        return torch.cat(self.model.vqvae.tokenize(model_batch(self.windows, idx, self.device)),
                         1).cpu()

    def __call__(self, idx) -> torch.Tensor:
        idx = np.asarray(idx)
        t = self.table[torch.from_numpy(idx)] if self.table is not None else self._compute(idx)
        return t.to(self.device, torch.long)


def split_scales(tokens: torch.Tensor, scales: tuple[int, ...]) -> list[torch.Tensor]:
    return list(tokens.split(list(scales), dim=1))


def per_scale_ce(logits: torch.Tensor, targets: torch.Tensor, scales: tuple[int, ...]) -> torch.Tensor:
    """Mean cross-entropy of each scale (K,)."""
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, L)
    return torch.stack([c.mean() for c in ce.split(list(scales), dim=1)])


@torch.no_grad()
def stage2_report(model: TimeMAR, tokens: Tokens, batch: int = 512) -> dict:
    model.gpt.eval()
    scales, total = model.cfg.scales, torch.zeros(len(model.cfg.scales))
    idx = report_indices(len(tokens.windows), REPORT_WINDOWS[2])
    for i in range(0, len(idx), batch):
        t = tokens(idx[i:i + batch])
        inputs = model.vqvae.quant.teacher_inputs(split_scales(t, scales))
        total += per_scale_ce(model.gpt(inputs), t, scales).cpu() * len(t)
    ce = (total / len(idx)).tolist()
    return {"windows": len(idx), "ce_per_scale": [round(c, 4) for c in ce],
            "ce_mean_token": float(sum(c * s for c, s in zip(ce, scales)) / sum(scales))}
