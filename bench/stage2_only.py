"""Stage 2 alone on a finished checkpoint's tokenizer, for tuning experiments (issue 8).

Keeps the checkpoint's VQ-VAE, trains a fresh transformer (seed 0) with model / training
overrides under a time budget, and logs the cross-entropy per token on 1,024 training windows and
1,024 windows held out by the checkpoint's `train --holdout` split every 250 steps. Score the
result with `timemar-engine evaluate --ckpt OUT`. Used for `bench/results/experiments_T24.md`:

    python bench/stage2_only.py bench/results/ckpts/energy_T24_s_seed0.pt energy out.pt \\
        --data-dir ../shared/datasets --minutes 12 [--set dropout=0.1] [--tset lr2=0.002]
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import torch

from timemar_engine.config import TrainConfig
from timemar_engine.data import WindowSet, load_dataset
from timemar_engine.engine import Engine
from timemar_engine.holdout import split_windows
from timemar_engine.model import TimeMAR
from timemar_engine.stage_data import Tokens, stage2_report
from timemar_engine.training import Trainer


def pairs(items: list[str]) -> dict:
    return {k: json.loads(v) for k, v in (s.split("=", 1) for s in items)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", help="a checkpoint trained with --holdout")
    ap.add_argument("data", help="its dataset (name or file)")
    ap.add_argument("out", help="where the new checkpoint goes")
    ap.add_argument("--data-dir", help="folder holding the named datasets")
    ap.add_argument("--minutes", type=float, default=12.0, help="stage-2 budget (default 12)")
    ap.add_argument("--set", action="append", default=[], help="model field=JSON value")
    ap.add_argument("--tset", action="append", default=[], help="TrainConfig field=JSON value")
    a = ap.parse_args()
    old = Engine.load(a.ckpt, device="cpu")
    torch.manual_seed(0)
    model = TimeMAR(dataclasses.replace(old.model.cfg, **pairs(a.set)))
    model.vqvae.load_state_dict(old.model.vqvae.state_dict())
    windows = WindowSet.from_series(load_dataset(a.data, a.data_dir), old.seq_len, old.scaler)
    train, held = split_windows(windows, old.meta["holdout"]["fraction"])
    rng = np.random.default_rng(0)
    probes = {name: Tokens(model, w.subset(w.starts[rng.choice(len(w), min(1024, len(w)),
                                                               replace=False)]), "cpu", None)
              for name, w in (("training", train), ("held-out", held))}

    def on_step(stage: int, step: int, logs: dict) -> None:
        if step % 250 == 0:
            ce = {k: stage2_report(model, t)["ce_mean_token"] for k, t in probes.items()}
            model.gpt.train()  # the report leaves it in eval mode
            print(f"step {step}: cross-entropy per token " +
                  ", ".join(f"{k} {v:.3f}" for k, v in ce.items()), flush=True)

    meta = {k: v for k, v in old.meta.items() if k not in ("stage2", "history", "train_config")}
    tcfg = TrainConfig(max_minutes=a.minutes, seed=0, **pairs(a.tset))
    trainer = Trainer(model, train, old.scaler, old.channels, tcfg, a.out, "cpu", meta=meta,
                      progress=False, on_step=on_step, held=held)
    trainer.run((2,))
    s2 = trainer.meta["stage2"]
    print(f"{s2['steps']} steps; cross-entropy per token {s2['ce_mean_token']:.3f} training, "
          f"{s2['heldout_ce_mean_token']:.3f} held-out; saved {a.out}")


if __name__ == "__main__":
    main()
