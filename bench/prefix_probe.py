"""Which scales' sampled tokens a classifier catches: the Discriminative score of windows whose
first k token maps come from real windows and the rest from the transformer.

For each k in --prefixes, every real window is encoded to its K token maps; a random permutation
of them supplies the first k maps, the transformer draws maps k..K-1 scale by scale (token by token
at causal scales; its KV cache filled with the real prefix, as `sampling.generate` fills it with
its own draws), and the decoded
windows are scored against all real windows (protocol Discriminative score, --seeds repeats).
k = 0 is plain sampling, k = K the reconstructions. --temperatures sets one temperature per scale.

    python bench/prefix_probe.py bench/results/ckpts/energy_T24_s_seed0.pt energy \\
        --data-dir ../shared/datasets --prefixes 0 4 6
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from timemar_engine import Engine
from timemar_engine.decompose import area_resize
from timemar_engine.evaluation import real_windows
from timemar_engine.metrics.discriminative import discriminative_runs
from timemar_engine.sampling import sample_tokens


@torch.no_grad()
def draw_after_prefix(engine: Engine, prefix: list[torch.Tensor], k_real: int,
                      temperatures: list[float], generator: torch.Generator) -> list[np.ndarray]:
    """Token maps whose first k_real maps are `prefix`'s and the rest the transformer's draws."""
    model = engine.model
    gpt, quant, scales = model.gpt, model.vqvae.quant, model.cfg.scales
    batch = len(prefix[0])
    whole = len(scales) - model.cfg.causal_scales
    gpt.setup_cache(batch)
    try:
        f_hat, out, step = None, [], 0
        for k, s in enumerate(scales):
            coarse = None if k == 0 else area_resize(f_hat, s).transpose(1, 2)
            if k < whole:  # the whole map in one step
                logits = gpt.step(None if k == 0 else quant.gpt_inputs(coarse), step, batch)
                idx = prefix[k] if k < k_real else sample_tokens(logits.float(), generator,
                                                                  temperature=temperatures[k])
                step += 1
            else:  # a causal scale, token by token
                previous, tokens = torch.zeros_like(coarse[:, :1]), []
                for t in range(s):
                    logits = gpt.step(quant.gpt_inputs(coarse[:, t:t + 1], previous), step, batch)
                    tokens.append(prefix[k][:, t:t + 1] if k < k_real else sample_tokens(
                        logits.float(), generator, temperature=temperatures[k]))
                    previous, step = quant.codebook(tokens[-1]), step + 1
                idx = torch.cat(tokens, 1)
            h = quant.embed(idx, k)
            f_hat = h if f_hat is None else f_hat + h
            out.append(idx.cpu().numpy())
    finally:
        gpt.setup_cache(None)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt")
    ap.add_argument("data", help="the dataset the checkpoint was trained on (name or file)")
    ap.add_argument("--data-dir", help="folder of the named datasets")
    ap.add_argument("--prefixes", type=int, nargs="+", required=True,
                    help="numbers of leading scales taken from real windows (0..K)")
    ap.add_argument("--temperatures", type=float, nargs="+",
                    help="one sampling temperature per scale (default 1 everywhere)")
    ap.add_argument("--seeds", type=int, default=3, help="Discriminative repeats (default 3)")
    ap.add_argument("--iterations", type=int, default=2000,
                    help="classifier training iterations (the protocol's 2000)")
    ap.add_argument("--batch", type=int, default=2048, help="windows per sampling batch")
    args = ap.parse_args(argv)
    engine = Engine.load(args.ckpt, device="cpu")
    if not engine.cfg.multiscale:
        ap.error("a one-map model (multiscale=false) has no scales to take from real windows")
    K = len(engine.cfg.scales)
    temps = args.temperatures or [1.0] * K
    if len(temps) != K or any(not 0 <= k <= K for k in args.prefixes):
        ap.error(f"the model has {K} scales: give {K} temperatures and prefixes in 0..{K}")
    real, _ = real_windows(args.data, args.data_dir, engine.seq_len)
    tokens = [torch.as_tensor(t) for t in engine.encode(real, scale="unit")]
    order = torch.as_tensor(np.random.default_rng(0).permutation(len(real)))
    generator = torch.Generator().manual_seed(0)
    for k_real in args.prefixes:
        t0 = time.perf_counter()
        parts = [draw_after_prefix(engine, [t[order[i:i + args.batch]] for t in tokens], k_real,
                                   temps, generator) for i in range(0, len(real), args.batch)]
        maps = [np.concatenate([p[k] for p in parts]) for k in range(K)]
        fake = engine.decode(maps, scale="unit").astype(np.float64)
        runs = discriminative_runs(real, fake, seeds=list(range(args.seeds)),
                                    iterations=args.iterations)
        print(f"first {k_real} of {K} scales real: Discriminative {np.mean(runs):.3f} "
              f"(runs {' '.join(f'{r:.3f}' for r in runs)}; {time.perf_counter() - t0:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
