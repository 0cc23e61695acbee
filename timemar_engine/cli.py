"""The `timemar-engine` command line: train, sample, evaluate, info."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

EPILOG = """examples:
  timemar-engine sample --n 100000 --out samples.npy          # packaged default model
  timemar-engine train --data stocks --data-dir ../shared/datasets --seq-len 24 --preset s --out model.pt
  timemar-engine sample --ckpt model.pt --n 3662 --out s.csv --format csv --seed 0
  timemar-engine evaluate --ckpt model.pt --data stocks --data-dir ../shared/datasets --json e.json
  timemar-engine info --ckpt model.pt
"""


class UsageError(Exception):
    """A command line that cannot be carried out; printed as one error line."""


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS
    from .metrics.report import METRICS

    p = argparse.ArgumentParser(
        prog="timemar-engine", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train TimeMAR models (multi-scale autoregressive generation of multivariate "
                    "time series) and sample synthetic windows from them.", epilog=EPILOG)
    from . import __version__
    p.add_argument("--version", action="version", version=f"timemar-engine {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model (stage 1 VQ-VAE, then stage 2 transformer)",
                       description="Train a TimeMAR model on a dataset. Stage 1 fits the dual-path "
                       "VQ-VAE, stage 2 the block-causal transformer over its token maps. The "
                       "checkpoint is written atomically at the end of each stage and every two "
                       "minutes, so an interrupted run can be continued with --resume.")
    t.add_argument("--data", required=True,
                   help="a named dataset (sines, stocks, etth, energy, fmri, mujoco) or a file "
                        "(.csv with header, .npy 2-D series or 3-D windows, .mat, .parquet)")
    t.add_argument("--data-dir", help="folder holding the named datasets (default: "
                   "$TIMEMAR_DATA_DIR or ../shared/datasets)")
    t.add_argument("--variable", help="variable name inside a .mat file")
    t.add_argument("--nan", choices=("error", "drop", "ffill"), default="error",
                   help="what to do with NaN/inf values (default: error, naming the first one)")
    t.add_argument("--seq-len", type=_positive_int, default=24, help="window length T (default 24)")
    t.add_argument("--preset", choices=sorted(PRESETS), default="s",
                   help="model size (default s, < 6M parameters; xs is tiny; l is large)")
    t.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a model config field, e.g. --set codebook_size=256 (repeatable)")
    t.add_argument("--out", default="model.pt", help="checkpoint path (default model.pt)")
    t.add_argument("--stage", choices=("1", "2", "both"), default="both",
                   help="train only stage 1, only stage 2 (needs --resume from a stage-1 "
                        "checkpoint), or both (default)")
    t.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint written by train")
    t.add_argument("--steps1", type=_positive_int, default=3000, help="stage-1 steps (default 3000)")
    t.add_argument("--steps2", type=_positive_int, default=3000, help="stage-2 steps (default 3000)")
    t.add_argument("--batch-size", type=_positive_int, default=64, help="mini-batch (default 64)")
    t.add_argument("--lr1", type=float, default=2e-3, help="stage-1 peak learning rate")
    t.add_argument("--lr2", type=float, default=5e-4, help="stage-2 peak learning rate")
    t.add_argument("--max-minutes", type=float,
                   help="wall-clock budget for the whole run; step counts shrink to fit it")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    t.add_argument("--force", action="store_true", help="overwrite an existing --out")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("sample", help="sample synthetic windows from a checkpoint",
                       description="Sample n windows of shape (T, C) and write them to a file: "
                       ".npy holds an (n, T, C) float32 array; CSV and Parquet hold a long table "
                       "(window, step, one column per channel). Values are in data units unless "
                       "--scale says otherwise. Output is streamed in batches (bounded memory) "
                       "to a temporary file that is renamed when complete.")
    s.add_argument("--ckpt", help="checkpoint (default: the packaged default model)")
    s.add_argument("--n", type=_positive_int, required=True, help="number of windows")
    s.add_argument("--out", default="samples.npy", help="output path (default samples.npy)")
    s.add_argument("--format", choices=("npy", "csv", "parquet"),
                   help="output format (default: from the --out extension, else npy)")
    s.add_argument("--batch-size", type=_positive_int, help="windows per batch (default: 4096 on "
                   "CUDA; on CPU 256 for the engine, 2048 for eager); the same seed, batch size, "
                   "device and backend give the same samples")
    s.add_argument("--seed", type=int, help="random seed (default: random)")
    s.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1)")
    s.add_argument("--top-k", type=_positive_int, help="keep the k most likely codes")
    s.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1]")
    s.add_argument("--scale", choices=("data", "unit", "model"), default="data",
                   help="data units (default), unit = [0, 1] per channel, model = [-1, 1]")
    s.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    s.add_argument("--backend", default="auto", choices=("auto", "engine", "eager"),
                   help="sampling backend: auto (default: the fastest correct one on this "
                   "device), engine (preallocated static-shape loop; on CUDA bf16, Triton "
                   "attention and CUDA graphs) or eager (the plain PyTorch reference path)")
    s.add_argument("--force", action="store_true", help="overwrite an existing --out")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="score generated windows with the benchmark's four metrics",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Sample from a checkpoint and score the samples against the real "
                       "windows of a dataset with the TimeGAN / Diffusion-TS protocol: "
                       "discriminative, predictive (train on synthetic, test on real), "
                       "Context-FID and correlational scores (lower is better), each repeated "
                       "with fresh seeds and reported as mean +- 95%% t-interval half-width. "
                       "Everything is computed on windows in [0, 1].",
                       epilog="examples:\n"
                       "  timemar-engine evaluate --ckpt model.pt --data stocks --data-dir DIR "
                       "--json out.json --plot out.png\n"
                       "  timemar-engine evaluate --real real.npy --fake fake.npy --metrics "
                       "discriminative context_fid")
    e.add_argument("--ckpt", help="checkpoint to sample from (default: the packaged default model)")
    e.add_argument("--data", help="real data: a named dataset or a file (default: the dataset "
                   "the checkpoint was trained on)")
    e.add_argument("--data-dir", help="folder holding the named datasets")
    e.add_argument("--variable", help="variable name inside a .mat file")
    e.add_argument("--real", help="score two arrays instead: real windows (.npy, (n, T, C))")
    e.add_argument("--fake", help="generated windows (.npy, (n, T, C)) to score against --real")
    e.add_argument("--assume-unit", action="store_true", help="--real/--fake are already in "
                   "[0, 1]; otherwise both are min-max scaled by the real array's channel ranges")
    e.add_argument("--n", type=_positive_int, help="windows to sample (default: as many as real)")
    e.add_argument("--repeats", type=_positive_int, default=5, help="repeats per metric (default 5)")
    e.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS),
                   help="which metrics (default: all four)")
    e.add_argument("--iterations", action="append", default=[], metavar="METRIC=N",
                   help="override a metric's training iterations (protocol: discriminative=2000, "
                        "predictive=5000, context_fid=600); for quick looks only")
    e.add_argument("--json", help="write the results as JSON here")
    e.add_argument("--plot", help="write PCA / t-SNE / density plots to this PNG")
    e.add_argument("--seed", type=int, default=0, help="seed for sampling and the metrics")
    e.add_argument("--batch-size", type=_positive_int, help="sampling batch size")
    e.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    e.add_argument("--quiet", action="store_true", help="no progress bars")

    i = sub.add_parser("info", help="show a checkpoint's config, parameter counts and metadata",
                       description="Print a checkpoint's shape, scale schedule, parameter counts "
                       "per part and training metadata.")
    i.add_argument("--ckpt", help="checkpoint (default: the packaged default model)")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_train(args) -> int:
    import torch

    from .checkpoint import read_checkpoint
    from .config import ModelConfig, TrainConfig, preset
    from .data import MinMaxScaler, load_any, make_windows
    from .backends import resolve_device
    from .model import TimeMAR
    from .training import Trainer

    out = Path(args.out)
    if args.stage == "2" and not args.resume:
        raise UsageError("--stage 2 needs --resume CKPT (a checkpoint with stage 1 done)")
    if out.exists() and not args.force and not (args.resume and Path(args.resume) == out):
        raise UsageError(f"{out} exists; pass --force to overwrite it")
    series = load_any(args.data, args.data_dir, args.variable, args.nan, args.seq_len)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    tcfg = TrainConfig(batch_size=args.batch_size, stage1_steps=args.steps1,
                       stage2_steps=args.steps2, lr1=args.lr1, lr2=args.lr2, seed=args.seed,
                       max_minutes=args.max_minutes)
    resume_state, meta = None, {"dataset": series.name, "source": args.data, "seed": args.seed}
    if args.resume:
        obj = read_checkpoint(args.resume)
        cfg = ModelConfig.from_dict(obj["config"])
        if cfg.channels != series.channels or cfg.seq_len != args.seq_len:
            raise UsageError(f"{args.resume} was trained with T={cfg.seq_len}, "
                             f"C={cfg.channels}; this data gives T={args.seq_len}, "
                             f"C={series.channels}")
        model = TimeMAR(cfg)
        model.vqvae.load_state_dict(obj["vqvae"])
        model.gpt.load_state_dict(obj["gpt"])
        scaler = MinMaxScaler(obj["scaler_lo"].numpy(), obj["scaler_hi"].numpy())
        meta = obj.get("meta", meta)
        resume_state = obj.get("train_state") or {"stage": 3}
        if args.stage == "2":
            resume_state = resume_state if resume_state.get("stage") == 2 else {"stage": 2, "step": 0}
    else:
        cfg = preset(args.preset, args.seq_len, series.channels, **parse_overrides(args.set))
        model = TimeMAR(cfg)
        scaler = (MinMaxScaler.identity(series.channels) if series.unit_scaled
                  else MinMaxScaler.fit(series.values))
        meta["preset"] = args.preset
    windows = scaler.to_unit(make_windows(series.values, args.seq_len)).astype(np.float32)
    counts = model.parameter_counts()
    if not args.quiet:
        print(f"data: {series.name}, {len(windows)} windows of {args.seq_len} x {series.channels}; "
              f"device {device}; parameters {counts['total']:,} "
              f"(VQ-VAE {counts['total'] - counts['transformer']:,}, "
              f"transformer {counts['transformer']:,})")
    stages = {"1": (1,), "2": (2,), "both": (1, 2)}[args.stage]
    if resume_state and resume_state.get("stage", 0) > max(stages):
        print(f"{args.resume}: the requested stage(s) are already complete; nothing to do")
        return 0
    t0 = time.perf_counter()
    trainer = Trainer(model, windows, scaler, series.columns, tcfg, out, device, meta,
                      progress=not args.quiet)
    trainer.meta["parameters"] = counts
    trainer.run(stages, resume_state)
    trainer.meta["train_minutes"] = round(trainer.meta.get("train_minutes", 0)
                                          + (time.perf_counter() - t0) / 60, 2)
    trainer.save(None if 2 in stages else {"stage": 2, "step": 0})
    print(f"saved {out}")
    return 0


def cmd_sample(args) -> int:
    from .engine import Engine

    out = Path(args.out)
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists; pass --force to overwrite it")
    engine = Engine.load(args.ckpt, device=args.device, backend=args.backend)
    t0 = time.perf_counter()
    engine.sample_to(out, args.n, batch_size=args.batch_size, seed=args.seed,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, scale=args.scale,
        progress=not args.quiet, overwrite=args.force, fmt=args.format)
    dt = time.perf_counter() - t0
    if not args.quiet:
        print(f"wrote {args.n} windows of {engine.seq_len} x {len(engine.channels)} to {out} "
              f"in {dt:.1f} s ({args.n / dt:,.0f} windows/s, {engine.device})")
    return 0


def default_real_data(meta: dict) -> str | None:
    """The data a checkpoint was trained on: a named dataset, or the file path it was given."""
    from .data import NAMED

    name, source = meta.get("dataset"), meta.get("source")
    if name in NAMED:
        return name
    return source if source and Path(source).exists() else None


def cmd_evaluate(args) -> int:
    from .backends import resolve_device
    from .engine import Engine
    from .evaluation import (evaluate_checkpoint, format_table, load_windows, scale_pair,
                             score_windows, write_json)

    device = resolve_device(args.device)
    common = dict(metrics=args.metrics, repeats=args.repeats, seed=args.seed, device=device,
                  iterations={k: int(v) for k, v in parse_overrides(args.iterations).items()},
                  plot=args.plot, progress=not args.quiet)
    if args.real or args.fake:
        if not (args.real and args.fake) or args.ckpt or args.data:
            raise UsageError("--real and --fake go together, without --ckpt or --data")
        real, fake = scale_pair(load_windows(args.real), load_windows(args.fake), args.assume_unit)
        result = score_windows(real, fake, **common)
        result.update(real=args.real, fake=args.fake)
    else:
        engine = Engine.load(args.ckpt, device=device)
        data = args.data or default_real_data(engine.meta)
        if not data:
            raise UsageError("say which real data to compare with: --data NAME_OR_FILE")
        result = evaluate_checkpoint(engine, data, args.data_dir, n=args.n,
                                     batch_size=args.batch_size, variable=args.variable, **common)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if result.get("plots"):
        print("wrote " + ", ".join(result["plots"]))
    return 0


def cmd_info(args) -> int:
    from .engine import Engine

    info = Engine.load(args.ckpt, device="cpu").info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    meta = info["meta"]
    print(f"checkpoint  {info['path']}")
    print(f"data        {meta.get('dataset', '?')}: T={info['seq_len']}, C={len(info['channels'])} "
          f"({', '.join(info['channels'][:8])}{', ...' if len(info['channels']) > 8 else ''})")
    print(f"scales      {info['scales']} ({sum(info['scales'])} tokens), codebook "
          f"{info['config']['codebook_size']} x {info['config']['code_dim']}")
    print(f"backend     {info['backend']} on {info['device']} (available here: "
          f"{', '.join(info['backends_available'])}; triton "
          f"{'installed' if info['triton'] else 'not installed'})")
    print("parameters")
    for name, n in info["parameters"].items():
        print(f"  {name:<15} {n:>12,}")
    for stage in ("stage1", "stage2"):
        if stage in meta:
            print(f"{stage:<11} {json.dumps(meta[stage])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError

    args = build_parser().parse_args(argv)
    handler = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate,
               "info": cmd_info}[args.command]
    try:
        return handler(args)
    except (UsageError, CheckpointError, DataError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
