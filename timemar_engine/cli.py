"""The `timemar-engine` command line: train, sample, evaluate, info, export."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from .cli_checks import (OneLineParser, UsageError, check_ckpt_arg, device_name,
                         holdout_fraction, int_at_least, output_format, positive_float,
                         positive_int, probability, seed_value)
from .cli_evaluate import add_parser as add_evaluate_parser, cmd_evaluate
from .cli_export import add_parser as add_export_parser, cmd_export

EPILOG = """examples:
  timemar-engine sample --n 100000 --out samples.npy          # packaged default model
  timemar-engine train --data stocks --data-dir ../shared/datasets --seq-len 24 --preset s --out model.pt
  timemar-engine sample --ckpt model.pt --n 3662 --out s.csv --format csv --seed 0
  timemar-engine evaluate --ckpt model.pt --data stocks --data-dir ../shared/datasets --json e.json
  timemar-engine info --ckpt model.pt
  timemar-engine export --ckpt model.pt --out decoder.onnx
  torchrun --nproc-per-node 2 -m timemar_engine sample --ckpt model.pt -n 200000 --out big.npy
"""


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS
    from .value_support import MAX_LEVELS, MIN_MASS

    p = OneLineParser(
        prog="timemar-engine", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train TimeMAR models (multi-scale autoregressive generation of multivariate "
                    "time series) and sample synthetic windows from them.", epilog=EPILOG)
    from . import __version__
    p.add_argument("--version", action="version", version=f"timemar-engine {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model (stage 1 VQ-VAE, then stage 2 transformer)",
                       description="Train a TimeMAR model on a dataset. Stage 1 fits the dual-path "
                       "VQ-VAE, stage 2 the block-causal transformer over its token maps. The "
                       "checkpoint is written atomically at the end of each stage, every two "
                       "minutes and on Ctrl-C or SIGTERM, so an interrupted run continues exactly "
                       "with --resume. Launched by torchrun, the processes train data-parallel "
                       "(--batch-size is then the global batch).")
    t.add_argument("--data", required=True,
                   help="a named dataset (sines, stocks, etth, energy, fmri, mujoco) or a file "
                        "(.csv with header, .npy 2-D series or 3-D windows, .mat, .parquet)")
    t.add_argument("--data-dir", help="folder holding the named datasets (default: "
                   "$TIMEMAR_DATA_DIR or ../shared/datasets)")
    t.add_argument("--variable", help="variable name inside a .mat file")
    t.add_argument("--nan", choices=("error", "drop", "ffill"),
                   help="what to do with NaN/inf values (default: error, naming the first one); "
                   "stored in the checkpoint and used again by evaluate")
    t.add_argument("--no-header", dest="header", action="store_const", const=False,
                   help="the CSV has no header row (columns are named col0, col1, ...); without "
                   "it a first row that looks like numbers is an error")
    t.add_argument("--non-numeric", choices=("error", "drop"),
                   help="a column with some non-numeric cells: error (default, naming the first "
                   "cell) or drop the column")
    t.add_argument("--seq-len", type=int_at_least(4, "an integer"),
                   help="window length T, at least 4 (default 24)")
    t.add_argument("--preset", choices=sorted(PRESETS),
                   help="model size (default s, < 6M parameters; xs is tiny; l is large); "
                   "each draws every token map but the first token by token (--set "
                   "causal_scales=0: each map at once, faster sampling)")
    t.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a model config field, e.g. --set codebook_size=256 (repeatable)")
    t.add_argument("--out", default="model.pt", help="checkpoint path (default model.pt)")
    t.add_argument("--stage", choices=("1", "2", "both"), default="both",
                   help="train only stage 1, only stage 2 (needs --resume from a stage-1 "
                        "checkpoint), or both (default)")
    t.add_argument("--resume", metavar="CKPT", help="continue a run exactly where its checkpoint "
                   "left it (data order, RNGs, optimizer, schedule); the original run's model and "
                   "training flags are restored, and a flag that contradicts them is an error")
    t.add_argument("--steps1", type=positive_int, help="stage-1 steps (default: as many as fit "
                   "in its share of --max-minutes; 3000 without --max-minutes)")
    t.add_argument("--steps2", type=positive_int, help="stage-2 steps (default: as many as fit "
                   "in its share of --max-minutes; 3000 without --max-minutes)")
    t.add_argument("--batch-size", type=positive_int,
                   help="mini-batch (default 64; under torchrun the global batch, split evenly "
                   "across the processes)")
    t.add_argument("--lr1", type=positive_float, help="stage-1 peak learning rate (default 2e-3)")
    t.add_argument("--lr2", type=positive_float, help="stage-2 peak learning rate (default 1e-3)")
    t.add_argument("--max-minutes", type=positive_float,
                   help="wall-clock budget for the whole run (stage 1 gets 40%% of it when both "
                   "stages run): a stage without --steps1 / --steps2 trains until its share is "
                   "spent, one with them stops early if they do not fit (the learning-rate "
                   "schedule and warm-up follow the step count the budget allows)")
    t.add_argument("--seed", type=seed_value, help="random seed (default 0)")
    t.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="stage 2's arithmetic: bf16 autocast (fp32 weights and optimizer) or "
                   "fp32; auto (default) is bf16 on CUDA and on CPUs with native bf16 "
                   "(AVX512-BF16 or AMX), fp32 elsewhere, where bf16 is emulated and slow")
    t.add_argument("--holdout", type=holdout_fraction, metavar="FRACTION",
                   help="keep this fraction of the data out of training (the end of up to 10 "
                   "evenly spaced blocks; no window crosses a boundary) so `evaluate` checks "
                   "memorisation against windows the model never saw; each stage's report "
                   "(printed, and in `info`) scores them beside the training windows "
                   "(default 0: train on all)")
    t.add_argument("--device", type=device_name, default="auto",
                   help="auto (CUDA when present), cpu, cuda or cuda:N")
    t.add_argument("--force", action="store_true", help="overwrite an existing --out")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("sample", help="sample synthetic windows from a checkpoint",
                       description="Sample n windows of shape (T, C) and write them to a file: "
                       ".npy holds an (n, T, C) float32 array; CSV and Parquet hold a long table "
                       "(window, step, one column per channel). Values are in data units unless "
                       "--scale says otherwise. Output is streamed in batches (bounded memory) "
                       "to a temporary file that is renamed when complete.")
    s.add_argument("--ckpt", help="checkpoint (default: the packaged default model)")
    s.add_argument("-n", "--n", type=positive_int, required=True, help="number of windows "
                   "(under torchrun write -n: torchrun's own parser takes --n for its --nnodes)")
    s.add_argument("--out", default="samples.npy", help="output path (default samples.npy)")
    s.add_argument("--format", choices=("npy", "csv", "parquet"),
                   help="output format (default: from the --out extension, else npy)")
    s.add_argument("--batch-size", type=positive_int, help="windows per write (default: 4096 on "
                   "CUDA; on CPU 256 for the engine, 2048 for eager; sampling itself goes in "
                   "chunks of 4096 on CUDA, 256 on CPU); the same seed, device type and backend "
                   "give the same samples for any batch size and number of processes")
    s.add_argument("--seed", type=seed_value, help="random seed (default: random)")
    s.add_argument("--temperature", type=positive_float, default=1.0,
                   help="softmax temperature, a finite number > 0 (default 1; towards 0 the "
                   "most likely code is taken)")
    s.add_argument("--top-k", type=positive_int, help="keep the k most likely codes (a k of at "
                   "least the codebook size keeps them all)")
    s.add_argument("--top-p", type=probability, help="nucleus sampling mass in (0, 1]")
    s.add_argument("--scale", choices=("data", "unit", "model"), default="data",
                   help="data units (default), unit = [0, 1] per channel, model = [-1, 1]")
    s.add_argument("--raw-values", dest="snap_values", action="store_false",
                   help="keep the decoder's continuous values: by default, in data and unit "
                   f"scale, channels with at most {MAX_LEVELS} distinct values in the training "
                   "data snap to them, and values piled up at a channel's minimum or maximum (at "
                   f"least {MIN_MASS * 100:g}%% of the data, e.g. zeros at night) are restored in the "
                   "same share (see `info`)")
    s.add_argument("--device", type=device_name, default="auto",
                   help="auto (CUDA when present), cpu, cuda or cuda:N")
    s.add_argument("--backend", default="auto", choices=("auto", "engine", "eager"),
                   help="sampling backend: auto (default: the fastest correct one on this "
                   "device), engine (preallocated static-shape loop; on CUDA bf16, Triton "
                   "attention and CUDA graphs) or eager (the plain PyTorch reference path)")
    s.add_argument("--decoder", default="auto",
                   choices=("auto", "pytorch", "onnxruntime", "tensorrt"),
                   help="how the engine decodes latents: auto (= pytorch, with the C++ epilogue "
                   "when built; onnxruntime was not faster on CPU), onnxruntime or tensorrt "
                   "(the exported decoder, see `export`)")
    s.add_argument("--precision", default="auto", choices=("auto", "fp32", "int8"),
                   help="the engine transformer's arithmetic: auto (default: bf16 on CUDA; on "
                   "CPU int8 linear layers for models with d_model >= 256 where the CPU has "
                   "int8 dot products (AVX512-VNNI or AVX-VNNI), else fp32), fp32, or int8 (CPU "
                   "with the C++ extension; without VNNI far slower); int8 and bf16 change individual samples, "
                   "not their distribution (tested)")
    s.add_argument("--force", action="store_true", help="overwrite an existing --out")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    add_evaluate_parser(sub)

    i = sub.add_parser("info", help="show a checkpoint's config, parameter counts and metadata",
                       description="Print a checkpoint's shape, scale schedule, parameter counts "
                       "per part and training metadata.")
    i.add_argument("--ckpt", help="checkpoint (default: the packaged default model)")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_export_parser(sub)
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
    from .train_api import train

    train(args.data, out=args.out, seq_len=args.seq_len, preset=args.preset,
          overrides=parse_overrides(args.set), resume=args.resume, stage=args.stage,
          steps1=args.steps1, steps2=args.steps2, batch_size=args.batch_size, lr1=args.lr1,
          lr2=args.lr2, seed=args.seed, max_minutes=args.max_minutes, precision=args.precision,
          device=args.device, data_dir=args.data_dir, variable=args.variable, nan=args.nan,
          header=args.header, non_numeric=args.non_numeric, holdout=args.holdout, force=args.force,
          progress=not args.quiet)
    return 0


def cmd_sample(args) -> int:
    from . import distributed
    from .backends import distributed_device
    from .distributed_parquet import check_dataset
    from .engine import Engine
    from .writers import check_output

    out = Path(args.out)
    fmt = output_format(out, args.format)
    sharded = distributed.launched_by_torchrun()
    if sharded and fmt not in ("npy", "parquet"):
        raise UsageError(f"sharded sampling (under torchrun) writes .npy or Parquet only, not "
                         f"{fmt}; name an .npy or .parquet --out, or sample {fmt} in one process")
    check_ckpt_arg(args.ckpt)
    # the output path, its folder and the format's dependencies, before loading anything; the
    # channel names are checked against the table's columns once the model is known
    if sharded and fmt == "parquet":
        check_dataset(out, [], args.force)
    else:
        check_output(out, fmt, [], args.force)
    device = distributed_device(args.device, distributed.local_rank()) if sharded else args.device
    engine = Engine.load(args.ckpt, device=device, backend=args.backend,
                         decoder=args.decoder, precision=args.precision,
                         snap_values=args.snap_values)
    t0 = time.perf_counter()
    engine.sample_to(out, args.n, batch_size=args.batch_size, seed=args.seed,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, scale=args.scale,
        progress=not args.quiet, overwrite=args.force, fmt=fmt, distributed=sharded)
    dt = time.perf_counter() - t0
    if not args.quiet and distributed.env_rank() == 0:
        print(f"wrote {args.n} windows of {engine.seq_len} x {len(engine.channels)} to {out} "
              f"in {dt:.1f} s ({args.n / dt:,.0f} windows/s, {engine.device})")
    return 0


def cmd_info(args) -> int:
    from .engine import Engine

    check_ckpt_arg(args.ckpt)
    info = Engine.load(args.ckpt, device="cpu").info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    meta = info["meta"]
    print(f"checkpoint  {info['path']}")
    print(f"data        {meta.get('dataset', '?')}: T={info['seq_len']}, C={len(info['channels'])} "
          f"({', '.join(info['channels'][:8])}{', ...' if len(info['channels']) > 8 else ''})")
    causal = info["config"].get("causal_scales", 0)
    order = ("one map, token by token" if not info["config"]["multiscale"] else "next-scale"
             + (f", the finest {causal} token by token" if causal else ""))
    print(f"scales      {info['scales']} ({sum(info['scales'])} tokens, {order}), codebook "
          f"{info['config']['codebook_size']} x {info['config']['code_dim']}")
    print(f"backend     {info['backend']} on {info['device']}, {info['precision']} transformer "
          "(available here: "
          f"{', '.join(info['backends_available'])}; triton "
          f"{'installed' if info['triton'] else 'not installed'})")
    if info["value_support"]:
        print(f"values      restored in samples: {'; '.join(info['value_support'])}")
    ext = info["extension"]
    if ext["loaded"]:
        cuda = "compiled" if ext["cuda_ops"] else "not compiled (no nvcc at build time)"
        print(f"extension   C++ ops loaded, CUDA ops {cuda} ({ext['path']})")
    else:
        print(f"extension   not available: {ext['reason']}")
    print("parameters")
    for name, n in info["parameters"].items():
        print(f"  {name:<15} {n:>12,}")
    for stage in ("stage1", "stage2"):
        if stage in meta:
            print(f"{stage:<11} {json.dumps(meta[stage])}")
    return 0


def report(message: str) -> None:
    """An error line on stderr; under torchrun only from rank 0 (every rank fails alike)."""
    from .distributed import env_rank

    if env_rank() == 0:
        print(message, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from .safe_io import Terminated, install_termination_handler

    install_termination_handler()  # SIGTERM then cleans up like Ctrl-C
    try:
        from .checkpoint import CheckpointError
        from .data import DataError
        from .distributed import ShardError, job, launched_by_torchrun

        args = build_parser().parse_args(argv)
        handler = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate,
                   "info": cmd_info, "export": cmd_export}[args.command]
        sharded = args.command == "sample" and launched_by_torchrun()
        with job(args.device) if sharded else contextlib.nullcontext():
            try:
                return handler(args)
            except ShardError as e:
                report(f"error: {e}")
                return 1
            except (UsageError, CheckpointError, DataError, FileExistsError, ValueError) as e:
                report(f"error: {e}")
                return 2
            except OSError as e:
                msg = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else e
                report(f"error: {msg}")
                return 2
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
