"""Context-FID (Frechet distance in a TS2Vec embedding space), protocol section 2.3.

A compact TS2Vec is trained anew on the *real* windows only (600 iterations, batch 8,
AdamW lr 1e-3, random overlapping crops, binomial time mask, hierarchical contrastive
loss); the equal-weight running average of its weights (``torch.optim.swa_utils.AveragedModel``)
encodes real and fake windows (eval mode, no mask), max-pooled over time to one 320-d vector
per window; the score is the Frechet distance between the two embedding sets.

Implementation note: a "same"-padded conv with dilation d >= the sequence length only ever
sees zero padding through its off-centre taps, so it is computed as a 1x1 conv with the
centre tap.  This is exact (outputs and gradients), and halves the cost at T = 24 where
dilations 32..1024 exceed T.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._common import as_device, one_blas_thread, progress_bar, validate_pair

__all__ = ["context_fid", "frechet_distance", "TSEncoder", "hierarchical_contrastive_loss",
           "train_ts2vec", "encode"]


# --------------------------------------------------------------------------- TS2Vec encoder
class _SameConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, dilation: int):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError("kernel must be odd")
        self.dilation, self.kernel = dilation, kernel
        self.conv = nn.Conv1d(cin, cout, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel > 1 and self.dilation >= x.shape[-1]:   # side taps only see padding
            k = self.kernel // 2
            return F.conv1d(x, self.conv.weight[:, :, k:k + 1], self.conv.bias)
        return self.conv(x)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, dilation: int, final: bool):
        super().__init__()
        self.conv1 = _SameConv(cin, cout, 3, dilation)
        self.conv2 = _SameConv(cout, cout, 3, dilation)
        self.proj = nn.Conv1d(cin, cout, 1) if (cin != cout or final) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.proj is None else self.proj(x)
        x = self.conv1(F.gelu(x))
        x = self.conv2(F.gelu(x))
        return x + skip


class TSEncoder(nn.Module):
    """Linear(C->hidden) -> [train: binomial time mask p] -> depth dilated residual blocks
    (dilation 2^i, hidden channels) -> final block (dilation 2^depth, out channels) -> dropout.
    Input (B, T, C) -> output (B, T, out)."""

    def __init__(self, input_dims: int, output_dims: int = 320, hidden_dims: int = 64,
                 depth: int = 10, mask_p: float = 0.5, dropout: float = 0.1):
        super().__init__()
        self.mask_p = mask_p
        self.input_fc = nn.Linear(input_dims, hidden_dims)
        chans = [hidden_dims] * depth + [output_dims]
        self.blocks = nn.Sequential(*[
            _Block(chans[i - 1] if i > 0 else hidden_dims, chans[i], 2 ** i, final=(i == len(chans) - 1))
            for i in range(len(chans))])
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nan = torch.isnan(x).any(dim=-1, keepdim=True)
        h = self.input_fc(torch.where(nan, torch.zeros_like(x), x))
        keep = ~nan
        if self.training:
            keep = keep & (torch.rand(h.shape[:2] + (1,), device=h.device) < self.mask_p)
        h = h * keep
        h = self.blocks(h.transpose(1, 2))
        return self.dropout(h).transpose(1, 2)


# --------------------------------------------------------------------------- loss
def _contrast(z: torch.Tensor, n: int) -> torch.Tensor:
    """z: (G, 2n, D) where rows i and n+i of each group are positives; every other row of the
    same group is a negative.  Returns the mean cross-entropy of picking the positive."""
    sim = z @ z.transpose(1, 2)                                    # (G, 2n, 2n)
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logp = torch.log_softmax(sim.masked_fill(eye, float("-inf")), dim=-1)
    i = torch.arange(n, device=z.device)
    return -(logp[:, i, n + i].mean() + logp[:, n + i, i].mean()) / 2


def hierarchical_contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """TS2Vec loss for two views z1, z2 of shape (B, L, D) (temporal unit 0).

    At each scale: alpha * instance-contrastive (across the batch, per time step) +
    (1 - alpha) * temporal-contrastive (across time, per series); then max-pool time by 2 and
    repeat until length 1 (instance term only at length 1).  Averaged over scales.
    """
    loss, scales = z1.new_zeros(()), 0
    B = z1.shape[0]
    while True:
        L = z1.shape[1]
        if alpha != 0 and B > 1:
            loss = loss + alpha * _contrast(torch.cat([z1, z2], 0).transpose(0, 1), B)
        if L > 1 and alpha != 1:
            loss = loss + (1 - alpha) * _contrast(torch.cat([z1, z2], 1), L)
        scales += 1
        if L <= 1:
            break
        z1 = F.max_pool1d(z1.transpose(1, 2), 2).transpose(1, 2)
        z2 = F.max_pool1d(z2.transpose(1, 2), 2).transpose(1, 2)
    return loss / scales


# --------------------------------------------------------------------------- train / encode
def _rows(x: torch.Tensor, start: np.ndarray, length: int) -> torch.Tensor:
    """Per-row crop: out[b] = x[b, start[b]:start[b]+length]."""
    dev = x.device
    t = torch.from_numpy(start).to(dev)[:, None] + torch.arange(length, device=dev)[None]
    return x[torch.arange(x.shape[0], device=dev)[:, None], t]


def train_ts2vec(data: torch.Tensor, *, seed: int, iterations: int = 600, batch_size: int = 8,
                 lr: float = 1e-3, progress: bool = False, **encoder_kw) -> nn.Module:
    """Train a TS2Vec encoder on ``data`` (N, T, C) (on its device); return the SWA-averaged
    encoder (an ``AveragedModel``) in eval mode.  Seeds numpy (crops, shuffling) and torch
    (init, masks, dropout; global RNG forked so callers' state is untouched)."""
    dev = data.device
    n, T, C = data.shape
    if T < 2:
        raise ValueError("context_fid: windows must have length >= 2 for TS2Vec crops")
    rng = np.random.default_rng(seed)
    fork_devs = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devs):
        torch.manual_seed(seed)
        net = TSEncoder(C, **encoder_kw).to(dev)
        avg = torch.optim.swa_utils.AveragedModel(net)
        avg.update_parameters(net)          # the initial weights count as the first average member
        opt = torch.optim.AdamW(net.parameters(), lr=lr)
        bs = min(batch_size, n)
        perm, pos = rng.permutation(n), 0
        bar = progress_bar(iterations, "context-FID TS2Vec", progress)
        net.train()
        for _ in range(iterations):
            if pos + bs > n:                # drop_last, then a fresh epoch
                perm, pos = rng.permutation(n), 0
            x = data[torch.from_numpy(perm[pos:pos + bs]).to(dev)]
            pos += bs
            # two random overlapping crops [eleft, right) and [left, eright) sharing [left, right)
            crop_l = int(rng.integers(2, T + 1))
            left = int(rng.integers(0, T - crop_l + 1))
            right = left + crop_l
            eleft = int(rng.integers(0, left + 1))
            eright = int(rng.integers(right, T + 1))
            shift = rng.integers(-eleft, T - eright + 1, size=bs)   # per-series offset
            out1 = net(_rows(x, shift + eleft, right - eleft))[:, -crop_l:]
            out2 = net(_rows(x, shift + left, eright - left))[:, :crop_l]
            loss = hierarchical_contrastive_loss(out1, out2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            avg.update_parameters(net)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    avg.eval()
    return avg


@torch.no_grad()
def encode(model: nn.Module, x: np.ndarray, device, batch: int = 2048) -> np.ndarray:
    """Full-series encoding: per-step representations max-pooled over time -> (N, out) float64."""
    model.eval()
    outs = []
    for s in range(0, x.shape[0], batch):
        xb = torch.from_numpy(x[s:s + batch].astype(np.float32)).to(device)
        outs.append(model(xb).amax(dim=1).double().cpu().numpy())
    return np.concatenate(outs)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)), unbiased covariances (np.cov),
    scipy.linalg.sqrtm, real part kept if complex."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: need two 2-D arrays with equal width; got {a.shape}, {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("frechet_distance: need at least 2 rows per set")
    with one_blas_thread():
        mu_a, mu_b = a.mean(0), b.mean(0)
        s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
        covmean = scipy.linalg.sqrtm(s_a @ s_b)
        if np.iscomplexobj(covmean):
            covmean = covmean.real
        return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2.0 * covmean))


def context_fid(real: np.ndarray, fake: np.ndarray, *, seed: int, device="cpu",
                iterations: int = 600, batch_size: int = 8, progress: bool = False) -> float:
    """One repeat of Context-FID: TS2Vec (output 320, hidden 64, depth 10) trained on ``real``
    only, SWA weights encode both sets, Frechet distance of the max-pooled embeddings.
    All fake windows are used (N_fake may differ from N_real)."""
    real, fake = validate_pair(real, fake, min_n=2, min_t=2, metric="context_fid")
    if iterations < 0 or batch_size < 1:
        raise ValueError("context_fid: iterations must be >= 0 and batch_size >= 1")
    dev = as_device(device)
    data = torch.from_numpy(real.astype(np.float32)).to(dev)
    model = train_ts2vec(data, seed=int(seed), iterations=iterations, batch_size=batch_size,
                         progress=progress)
    return frechet_distance(encode(model, real, dev), encode(model, fake, dev))
