"""Predictive score (train on synthetic, test on real; TSTR), protocol section 2.2.

A one-layer GRU (hidden int(C/2)) with a per-step linear+sigmoid head is trained on the
fake windows to predict the last channel one step ahead from the other C-1 channels
(input x[:, :T-1, :C-1], target x[:, 1:, C-1]); L1 loss, Adam(lr 1e-3).  The score is the
mean over all real windows of the per-window MAE over the T-1 steps.  Lower is better.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ._common import StackedGRU, as_device, hidden_size, progress_bar, validate_pair

__all__ = ["predictive_score", "predictive_runs"]


def predictive_score(real: np.ndarray, fake: np.ndarray, *, seed: int, device="cpu",
                     iterations: int = 5000, batch_size: int = 128,
                     progress: bool = False) -> float:
    """One repeat of the predictive (TSTR) score; needs C >= 2 and T >= 2."""
    return predictive_runs(real, fake, seeds=[seed], device=device, iterations=iterations,
                           batch_size=batch_size, progress=progress)[0]


def predictive_runs(real, fake, *, seeds: Sequence[int], device="cpu", iterations: int = 5000,
                    batch_size: int = 128, progress: bool = False,
                    eval_batch: int = 4096) -> list[float]:
    """Several independent repeats trained together as one stacked network (one per seed).

    Run i equals ``predictive_score(real, fake, seed=seeds[i])`` up to float rounding.
    """
    real, fake = validate_pair(real, fake, min_n=1, min_t=2, min_c=2, metric="predictive_score")
    if iterations < 0 or batch_size < 1:
        raise ValueError("predictive_score: iterations must be >= 0 and batch_size >= 1")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("predictive_score: need at least one seed")
    dev = as_device(device)
    R = len(seeds)
    n_f, C = fake.shape[0], fake.shape[2]

    fake_t = torch.from_numpy(fake.astype(np.float32)).to(dev)
    fx, fy = fake_t[:, :-1, :-1].contiguous(), fake_t[:, 1:, -1].contiguous()
    rngs = [np.random.default_rng(s) for s in seeds]
    net = StackedGRU(seeds, C - 1, hidden_size(C)).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    b = min(batch_size, n_f)
    bar = progress_bar(iterations, f"predictive x{R}", progress)
    for _ in range(iterations):
        idx = np.stack([rng.choice(n_f, b, replace=False) for rng in rngs])
        idx = torch.from_numpy(idx).to(dev)
        pred = torch.sigmoid(net.head(net.states(fx[idx], all_steps=True)))  # (R, b, T-1)
        loss = (pred - fy[idx]).abs().mean(dim=(1, 2)).sum()                # per-repeat MAE, summed
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    total = np.zeros(R)
    with torch.no_grad():
        for s in range(0, real.shape[0], eval_batch):
            rt = torch.from_numpy(real[s:s + eval_batch].astype(np.float32)).to(dev)
            pred = torch.sigmoid(net.head(net.states(rt[:, :-1, :-1], all_steps=True)))  # (R, n, T-1)
            mae = (pred - rt[:, 1:, -1]).abs().mean(dim=2)                                  # per window
            total += mae.double().sum(1).cpu().numpy()
    return [float(v) for v in total / real.shape[0]]
