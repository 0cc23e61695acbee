"""Evaluation plots in the style of the TimeGAN / Diffusion-TS figures.

``plot_evaluation`` writes one PNG with three panels: PCA, t-SNE and value density of real vs
generated windows, plus (when C <= 64) a second PNG ``<stem>_channels.png`` with one small
density plot per channel.  Uses matplotlib's Agg canvas directly (no pyplot, no global backend
change), so it works headless and inside other programs.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .metrics._common import one_blas_thread
from .safe_io import atomic_output

__all__ = ["plot_evaluation"]

_REAL, _FAKE = "tab:red", "tab:blue"


def _check(real, fake):
    out = []
    for name, x in (("real", real), ("fake", fake)):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 3:
            raise ValueError(f"plot_evaluation: `{name}` must be (N, T, C); got shape {x.shape}")
        if x.shape[0] < 2:
            raise ValueError(f"plot_evaluation: `{name}` needs at least 2 windows")
        if not np.isfinite(x).all():
            raise ValueError(f"plot_evaluation: `{name}` contains NaN or inf")
        out.append(x)
    if out[0].shape[1:] != out[1].shape[1:]:
        raise ValueError(f"plot_evaluation: (T, C) differ: {out[0].shape[1:]} vs {out[1].shape[1:]}")
    return out


def _density(ax, values: Sequence[np.ndarray], colors, labels, rng, max_values: int = 20000):
    lo = min(float(v.min()) for v in values)
    hi = max(float(v.max()) for v in values)
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    grid = np.linspace(lo - pad, hi + pad, 256)
    for v, c, lab in zip(values, colors, labels):
        v = v.ravel()
        if v.size > max_values:
            v = rng.choice(v, max_values, replace=False)
        try:
            from scipy.stats import gaussian_kde
            if np.ptp(v) == 0:
                raise ValueError("constant")
            ax.plot(grid, gaussian_kde(v)(grid), color=c, label=lab, lw=1.5)
        except (ValueError, np.linalg.LinAlgError):   # constant data: fall back to a histogram
            ax.hist(v, bins=50, range=(grid[0], grid[-1]), density=True, histtype="step", color=c, label=lab)


def plot_evaluation(real, fake, path, seed: int = 0, max_points: int = 1000, *,
                    embed: str = "mean", channel_names: Sequence[str] | None = None,
                    title: str | None = None, tsne_iter: int = 500) -> list[Path]:
    """Plot real vs generated windows; returns the list of PNG paths written.

    real, fake: (N, T, C) arrays (any scale, normally [0, 1]).  Up to ``max_points`` windows of
    each are drawn at random (``seed``).  For PCA and t-SNE each window becomes a vector:
    ``embed="mean"`` (default) averages over channels to a length-T curve, as the TimeGAN /
    Diffusion-TS figures do, so our plots read like theirs; ``embed="flatten"`` uses all T*C
    values.  PCA is fitted on the real windows and applied to both; t-SNE (sklearn, PCA init)
    embeds both together.  The density panel is a Gaussian KDE of all values (channel-mean
    values with embed="mean").  A per-channel density grid goes to ``<stem>_channels.png``
    when C <= 64.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    real, fake = _check(real, fake)
    if embed not in ("mean", "flatten"):
        raise ValueError(f"plot_evaluation: embed must be 'mean' or 'flatten'; got {embed!r}")
    if max_points < 2:
        raise ValueError("plot_evaluation: max_points must be >= 2")
    C = real.shape[2]
    names = list(channel_names) if channel_names is not None else [f"ch {i}" for i in range(C)]
    if len(names) != C:
        raise ValueError(f"plot_evaluation: {len(names)} channel names for {C} channels")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = min(max_points, real.shape[0], fake.shape[0])
    r = real[rng.choice(real.shape[0], n, replace=False)]
    f = fake[rng.choice(fake.shape[0], n, replace=False)]
    if embed == "mean":
        vr, vf = r.mean(axis=2), f.mean(axis=2)
    else:
        vr, vf = r.reshape(n, -1), f.reshape(n, -1)

    fig = Figure(figsize=(15, 4.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    k = min(2, vr.shape[1])
    pca = PCA(n_components=k, random_state=seed).fit(vr)
    pr, pf = pca.transform(vr), pca.transform(vf)
    if k == 1:
        pr, pf = np.c_[pr, np.zeros(n)], np.c_[pf, np.zeros(n)]
    axes[0].scatter(pr[:, 0], pr[:, 1], s=6, alpha=0.3, c=_REAL, label="real")
    axes[0].scatter(pf[:, 0], pf[:, 1], s=6, alpha=0.3, c=_FAKE, label="generated")
    axes[0].set_title("PCA"); axes[0].set_xlabel("PC 1"); axes[0].set_ylabel("PC 2")

    both = np.concatenate([vr, vf])
    perplexity = float(min(40.0, max(1.0, (2 * n - 1) / 3)))
    with one_blas_thread():
        emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                   max_iter=max(250, tsne_iter)).fit_transform(both)
    axes[1].scatter(emb[:n, 0], emb[:n, 1], s=6, alpha=0.3, c=_REAL, label="real")
    axes[1].scatter(emb[n:, 0], emb[n:, 1], s=6, alpha=0.3, c=_FAKE, label="generated")
    axes[1].set_title("t-SNE"); axes[1].set_xlabel("x-tsne"); axes[1].set_ylabel("y-tsne")

    dr, df = (vr, vf) if embed == "mean" else (r, f)
    _density(axes[2], [dr, df], [_REAL, _FAKE], ["real", "generated"], rng)
    axes[2].set_title("Value density" + (" (channel mean)" if embed == "mean" else ""))
    axes[2].set_xlabel("value"); axes[2].set_ylabel("density")
    for ax in axes:
        ax.legend(loc="best", fontsize=8, markerscale=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".").lower() or "png")
    written = [path]

    if C <= 64:
        cols = min(C, 8)
        rows = math.ceil(C / cols)
        fig = Figure(figsize=(2.3 * cols, 1.9 * rows + 0.4))
        FigureCanvasAgg(fig)
        grid = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for c in range(C):
            _density(grid[c], [r[:, :, c], f[:, :, c]], [_REAL, _FAKE], ["real", "generated"], rng,
                     max_values=5000)
            grid[c].set_title(names[c], fontsize=9)
            grid[c].tick_params(labelsize=7)
        for ax in grid[C:]:
            ax.set_axis_off()
        grid[0].legend(fontsize=7)
        fig.suptitle((title + ": " if title else "") + "per-channel value density (red real, blue generated)",
                     fontsize=10)
        fig.tight_layout()
        cpath = path.with_name(path.stem + "_channels.png")
        with atomic_output(cpath, overwrite=True) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        written.append(cpath)
    return written
