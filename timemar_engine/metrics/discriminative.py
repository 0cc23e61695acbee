"""Discriminative score (post-hoc GRU classifier), protocol section 2.1.

Score = |0.5 - accuracy| of a one-layer GRU (hidden int(C/2)) trained to tell real (label 1)
from fake (label 0) windows.  Lower is better; 0 means indistinguishable.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._common import StackedGRU, as_device, hidden_size, progress_bar, validate_pair

__all__ = ["discriminative_score", "discriminative_runs"]


def discriminative_score(real: np.ndarray, fake: np.ndarray, *, seed: int, device="cpu",
                         iterations: int = 2000, batch_size: int = 128,
                         progress: bool = False) -> float:
    """One repeat of the discriminative score.

    real, fake: (N, T, C) windows in [0, 1] (N may differ between them).  Each side is split
    80/20 (random permutation, first int(0.8 n) train); each iteration draws ``batch_size``
    real and ``batch_size`` fake training windows without replacement; loss = mean BCE(real)
    + mean BCE(fake); Adam(lr 1e-3, eps 1e-8).  Accuracy (p > 0.5 means real) is taken over
    the concatenated real and fake test sets.  Deterministic for a given seed and device.
    """
    return discriminative_runs(real, fake, seeds=[seed], device=device, iterations=iterations,
                               batch_size=batch_size, progress=progress)[0]


def discriminative_runs(real, fake, *, seeds: Sequence[int], device="cpu", iterations: int = 2000,
                        batch_size: int = 128, progress: bool = False,
                        eval_batch: int = 8192) -> list[float]:
    """Several independent repeats trained together as one stacked network (one per seed).

    Run i equals ``discriminative_score(real, fake, seed=seeds[i])`` up to float rounding.
    """
    real, fake = validate_pair(real, fake, min_n=2, metric="discriminative_score")
    if iterations < 0 or batch_size < 1:
        raise ValueError("discriminative_score: iterations must be >= 0 and batch_size >= 1")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("discriminative_score: need at least one seed")
    dev = as_device(device)
    R = len(seeds)
    n_r, n_f, C = real.shape[0], fake.shape[0], real.shape[2]
    ntr_r, ntr_f = int(0.8 * n_r), int(0.8 * n_f)
    if min(ntr_r, ntr_f) < 1 or min(n_r - ntr_r, n_f - ntr_f) < 1:
        raise ValueError("discriminative_score: each input needs enough windows for a non-empty "
                         f"80/20 split; got N_real={n_r}, N_fake={n_f}")

    # One tensor holding real then fake windows; per-repeat index arrays into it.
    data = torch.from_numpy(np.concatenate([real, fake]).astype(np.float32)).to(dev)
    rngs = [np.random.default_rng(s) for s in seeds]
    tr_r, te_r, tr_f, te_f = [], [], [], []
    for rng in rngs:
        pr, pf = rng.permutation(n_r), rng.permutation(n_f) + n_r
        tr_r.append(pr[:ntr_r]); te_r.append(pr[ntr_r:])
        tr_f.append(pf[:ntr_f]); te_f.append(pf[ntr_f:])

    net = StackedGRU(seeds, C, hidden_size(C)).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    b_r, b_f = min(batch_size, ntr_r), min(batch_size, ntr_f)
    target = torch.cat([torch.ones(b_r), torch.zeros(b_f)]).to(dev).expand(R, -1)
    bar = progress_bar(iterations, f"discriminative x{R}", progress)
    for _ in range(iterations):
        idx = np.empty((R, b_r + b_f), dtype=np.int64)
        for i, rng in enumerate(rngs):
            idx[i, :b_r] = tr_r[i][rng.choice(ntr_r, b_r, replace=False)]
            idx[i, b_r:] = tr_f[i][rng.choice(ntr_f, b_f, replace=False)]
        x = data[torch.from_numpy(idx).to(dev)]                       # (R, b_r + b_f, T, C)
        logits = net.head(net.states(x, all_steps=False))             # (R, b_r + b_f)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = (bce[:, :b_r].mean(1) + bce[:, b_r:].mean(1)).sum()   # per-repeat losses summed
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    correct = np.zeros(R)
    with torch.no_grad():
        for sets, label in ((te_r, 1), (te_f, 0)):
            idx = np.stack(sets)                                        # (R, n_test)
            for s in range(0, idx.shape[1], eval_batch):
                x = data[torch.from_numpy(idx[:, s:s + eval_batch]).to(dev)]
                is_real = torch.sigmoid(net.head(net.states(x, all_steps=False))) > 0.5
                hit = is_real if label == 1 else ~is_real
                correct += hit.sum(1).cpu().numpy()
    n_test = (n_r - ntr_r) + (n_f - ntr_f)
    return [float(abs(0.5 - c / n_test)) for c in correct]
