"""`timemar-engine evaluate`: score a checkpoint's samples (or its reconstructions, or any two
arrays) with the benchmark's four metrics."""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli_checks import (UsageError, check_ckpt_arg, check_metric_shapes, check_plot_dependencies,
                         device_name, iterations_item, positive_float, positive_int, probability,
                         read_windows, seed_value)


def add_parser(sub) -> None:
    from .metrics.report import METRICS

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
    e.add_argument("--nan", choices=("error", "drop", "ffill"),
                   help="NaN/inf policy for reading --data (default: the one the checkpoint was "
                   "trained with, else error)")
    e.add_argument("--no-header", dest="header", action="store_const", const=False,
                   help="--data is a CSV without a header row (default: as in training)")
    e.add_argument("--non-numeric", choices=("error", "drop"),
                   help="columns of --data with non-numeric cells (default: as in training, "
                   "else error)")
    e.add_argument("--real", help="score two arrays instead: real windows (.npy, (n, T, C))")
    e.add_argument("--fake", help="generated windows (.npy, (n, T, C)) to score against --real")
    e.add_argument("--assume-unit", action="store_true", help="--real/--fake are already in "
                   "[0, 1]; otherwise both are min-max scaled by the real array's channel ranges")
    e.add_argument("--n", type=positive_int, help="windows to sample (default: as many as real)")
    e.add_argument("--repeats", type=positive_int, default=5, help="repeats per metric (default 5)")
    e.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS),
                   help="which metrics (default: all four)")
    e.add_argument("--iterations", action="append", type=iterations_item, default=[],
                   metavar="METRIC=N",
                   help="override a metric's training iterations (protocol: discriminative=2000, "
                        "predictive=5000, context_fid=600); for quick looks only")
    e.add_argument("--temperature", type=positive_float, default=1.0,
                   help="sampling temperature, as for `sample` (default 1)")
    e.add_argument("--top-k", type=positive_int, help="sample from the k most likely codes")
    e.add_argument("--top-p", type=probability, help="nucleus sampling mass in (0, 1]")
    e.add_argument("--raw-values", dest="snap_values", action="store_false",
                   help="score the decoder's continuous values, without restoring the training "
                   "data's levels and point masses (as `sample --raw-values`)")
    e.add_argument("--reconstruct", action="store_true",
                   help="score the model's reconstructions of the real windows (encoded to "
                   "tokens and decoded) instead of samples: the tokenizer's ceiling. Samples "
                   "scoring far worse than it point at the transformer, near it at the VQ-VAE")
    e.add_argument("--no-memorization", dest="memorization", action="store_false",
                   help="skip the memorisation check (with --ckpt: each generated window's "
                   "distance to its nearest training window against held-out real windows')")
    e.add_argument("--json", help="write the results as JSON here")
    e.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    e.add_argument("--plot", help="write PCA / t-SNE / density plots to this PNG")
    e.add_argument("--seed", type=seed_value, default=0, help="seed for sampling and the metrics")
    e.add_argument("--batch-size", type=positive_int, help="sampling batch size")
    e.add_argument("--device", type=device_name, default="auto",
                   help="auto (CUDA when present), cpu, cuda or cuda:N")
    e.add_argument("--quiet", action="store_true", help="no progress bars")


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
    from .evaluation import (evaluate_checkpoint, format_table, scale_pair, score_windows,
                             write_json)
    from .safe_io import check_writable

    pair = bool(args.real or args.fake)
    filters = [f for f, v in (("--top-k", args.top_k), ("--top-p", args.top_p),
                              ("--temperature", args.temperature != 1.0)) if v]
    if pair:
        if not (args.real and args.fake) or args.ckpt or args.data:
            raise UsageError("--real and --fake go together, without --ckpt or --data")
        extra = [f for f, v in (("--n", args.n), ("--batch-size", args.batch_size),
                                ("--variable", args.variable), ("--data-dir", args.data_dir),
                                ("--nan", args.nan), ("--no-header", args.header),
                                ("--non-numeric", args.non_numeric))
                 if v is not None]
        extra += (["--reconstruct"] * args.reconstruct + ["--raw-values"] * (not args.snap_values)
                  + filters)
        if extra:
            raise UsageError(f"{', '.join(extra)} appl{'ies' if len(extra) == 1 else 'y'} to "
                             f"sampling from a checkpoint, not to --real/--fake")
    if args.reconstruct and not pair:
        sampling = ["--n"] * (args.n is not None) + filters
        if sampling:
            raise UsageError(f"{', '.join(sampling)} appl{'ies' if len(sampling) == 1 else 'y'} "
                             "to sampling; --reconstruct scores every real window's reconstruction")
    if args.plot:
        check_plot_dependencies()
    if args.json and args.plot and Path(args.json).resolve() == Path(args.plot).resolve():
        raise UsageError(f"--json and --plot name the same file {args.json}")
    device = resolve_device(args.device)
    common = dict(metrics=args.metrics, repeats=args.repeats, seed=args.seed, device=device,
                  iterations=dict(args.iterations), plot=args.plot, progress=not args.quiet)
    if pair:
        real, fake = read_windows("--real", args.real), read_windows("--fake", args.fake)
        if real.shape[1:] != fake.shape[1:]:
            raise UsageError(f"--real {args.real} has windows of T x C = {real.shape[1]} x "
                             f"{real.shape[2]}, --fake {args.fake} {fake.shape[1]} x "
                             f"{fake.shape[2]}; they must match")
        check_metric_shapes(args.metrics, **{"--real": real.shape, "--fake": fake.shape})
        real, fake = scale_pair(real, fake, args.assume_unit)
    else:
        check_ckpt_arg(args.ckpt)
    if args.json:  # before the long computation, not after it
        check_writable(args.json, args.force)
    if args.plot:
        check_writable(args.plot, overwrite=True)
    if pair:
        result = score_windows(real, fake, **common)
        result.update(real=args.real, fake=args.fake)
    else:
        engine = Engine.load(args.ckpt, device=device, snap_values=args.snap_values)
        check_metric_shapes(args.metrics, **{"--n": (args.n, None, None), "the model": (
            None, engine.seq_len, len(engine.channels))})
        data = args.data or default_real_data(engine.meta)
        if not data:
            raise UsageError("say which real data to compare with: --data NAME_OR_FILE")
        stored = engine.meta.get("data_options", {})
        opts = {k: stored.get(k, default) if v is None else v
                for k, v, default in (("nan", args.nan, "error"), ("header", args.header, True),
                                      ("non_numeric", args.non_numeric, "error"))}
        result = evaluate_checkpoint(engine, data, args.data_dir, n=args.n,
                                     batch_size=args.batch_size, variable=args.variable,
                                     memorization=args.memorization, **opts, **common,
                                     reconstruct=args.reconstruct, temperature=args.temperature,
                                     top_k=args.top_k, top_p=args.top_p)
    print(format_table(result))
    if args.json:
        write_json(result, args.json, overwrite=args.force)
        print(f"wrote {args.json}")
    if result.get("plots"):
        print("wrote " + ", ".join(result["plots"]))
    return 0
