"""Probe for issue 8: does the tokenizer's reconstruction residual, drawn as noise and added to
decoded windows, close the gap its ceiling leaves (fMRI: reconstructions score Discriminative
0.48, smoother than the data)?

Every real window is encoded and decoded; the residual r = real - reconstruction (model scale,
[-1, 1]) is fitted as Gaussian noise, either white (its channel covariance) or a per-channel AR(1)
with correlated innovations; fresh noise is added to the reconstructions (and, with --samples, to
the checkpoint's samples), clipped to [-1, 1], and each set is scored with Discriminative and
Context-FID against all real windows. The noise is fitted on all windows: a probe, not a model.
Used for `bench/results/experiments_T24.md`:

    python bench/residual_noise_probe.py CKPT fmri --data-dir ../shared/datasets [--samples]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from timemar_engine.engine import Engine
from timemar_engine.evaluation import real_windows
from timemar_engine.metrics.report import evaluate_arrays


def fit_noise(res: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel AR(1) coefficients (C,), their innovations' covariance (C, C) and the
    residuals' own covariance (C, C), from residuals (n, T, C)."""
    now, before = res[:, 1:], res[:, :-1]
    phi = (now * before).sum((0, 1)) / (before * before).sum((0, 1))
    innovations = (now - phi * before).reshape(-1, res.shape[-1])
    return (phi, np.cov(innovations, rowvar=False),
            np.cov(res.reshape(-1, res.shape[-1]), rowvar=False))


def draw_noise(n: int, T: int, phi: np.ndarray, cov: np.ndarray, rng: np.random.Generator,
               autoregressive: bool, burn_in: int = 32) -> np.ndarray:
    """(n, T, C) Gaussian noise: white with covariance cov, or AR(1) r_t = phi r_{t-1} + e_t
    with innovation covariance cov, started burn_in steps early."""
    C = len(phi)
    L = np.linalg.cholesky(cov + 1e-12 * np.eye(C))
    if not autoregressive:
        return rng.standard_normal((n, T, C)) @ L.T
    r, out = np.zeros((n, C)), np.empty((n, T, C))
    for t in range(burn_in + T):
        r = phi * r + rng.standard_normal((n, C)) @ L.T
        if t >= burn_in:
            out[:, t - burn_in] = r
    return out


def score(real: np.ndarray, fake_model_scale: np.ndarray, repeats: int) -> dict:
    res = evaluate_arrays(real, (fake_model_scale + 1) / 2, repeats=repeats, seed=0,
                          metrics=("discriminative", "context_fid"), progress=False)
    return {k: [round(v["mean"], 4), round(v["ci95"] or 0.0, 4)] for k, v in res["metrics"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("data", help="a named dataset or a table the checkpoint was trained on")
    ap.add_argument("--data-dir")
    ap.add_argument("--samples", action="store_true", help="also the checkpoint's samples")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--noise", nargs="+", choices=("none", "white", "ar1"),
                    default=["none", "white", "ar1"], help="which noise to add (default: all)")
    args = ap.parse_args()
    engine = Engine.load(args.ckpt, device="cpu")
    real, _ = real_windows(args.data, args.data_dir, engine.seq_len)
    recon = engine.decode(engine.encode(real, scale="unit"), scale="model").astype(np.float64)
    phi, cov_innovations, cov = fit_noise(real * 2 - 1 - recon)
    print(f"residual std (model scale), mean over channels {np.sqrt(np.diag(cov)).mean():.4f}; "
          f"AR(1) coefficient, mean {phi.mean():.3f}", flush=True)
    bases = {"reconstructions": recon}
    if args.samples:
        bases["samples"] = engine.sample(len(real), seed=0, scale="model").astype(np.float64)
    rng, out = np.random.default_rng(0), {}
    for name, base in bases.items():
        for noise in args.noise:
            fake = base if noise == "none" else np.clip(base + draw_noise(
                len(base), engine.seq_len, phi, cov_innovations if noise == "ar1" else cov, rng,
                noise == "ar1"), -1, 1)
            out[f"{name} + {noise}"] = score(real, fake, args.repeats)
            print(f"{name} + {noise} noise: {out[f'{name} + {noise}']}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
