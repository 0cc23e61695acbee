"""Benchmark table: train TimeMAR on each dataset, sample, and score with the protocol metrics.

For each dataset: train with `timemar-engine train` under a time budget (or reuse the checkpoint
in --ckpt-dir), sample as many windows as the dataset has real windows, and score them with the
four metrics of PROTOCOL.md section 2 (`timemar_engine.evaluation.evaluate_checkpoint`, the code
path of `timemar-engine evaluate`). Writes quality_T{T}.json (all numbers) and quality_T{T}.md
(our mean ± 95% t half-width next to the Diffusion-TS paper's numbers) under --out-dir; both are
rewritten after every dataset. Datasets whose files are missing are skipped. Training holds out
--holdout (default 0.1) of each dataset for the memorisation check of `evaluate`; the metrics
still compare with every real window. Each dataset also scores its reconstructions of the real
windows (the tokenizer's ceiling, `evaluate --reconstruct`).

After the main table (--preset), the ablations and model sizes of VARIANTS (no decomposition,
no coarse-seasonal guidance, no multi-scale, every token map drawn at once, preset `l`, twice the
budget) run on Stocks, ETTh and Energy into the same report (--variants picks them; --variants
alone runs none).

--long makes the long-window report instead, quality_long.{json,md}: ETTh and Energy at
T = 64, 128 and 256 (the Diffusion-TS paper's Table 2) and ETTh at T = 512, each trained under
the same budget (30 min of training each on a 2-core CPU; scoring the samples and the
reconstructions then took about 15 min at ETTh T = 64, and over 50 min at ETTh T = 256 and at
Energy T = 64 with other work on the cores: count on 8-10 hours in all).

A report made with the same settings is continued: datasets it already holds are kept (with the
commit and date that produced them) and only the others run, so the full table, hours of CPU,
accumulates over several runs of the same command; --redo runs them again. An entry whose
recorded model config differs from the one its preset and overrides give now (a changed preset
default) is run again.

    python bench/quality.py --data-dir ../shared/datasets --train-minutes 30
    python bench/quality.py --data-dir ../shared/datasets --train-minutes 30 --long
    python bench/quality.py --datasets sines stocks --reuse --redo  # re-score saved checkpoints
    python bench/quality.py --datasets sines --quick --out-dir /tmp/q  # smoke test, ~30 s on CPU
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from timemar_engine import cli
from timemar_engine.config import PRESETS, preset as preset_config
from timemar_engine.data import NAMED, DataError, load_dataset
from timemar_engine.backends import resolve_device
from timemar_engine.engine import Engine
from timemar_engine.evaluation import evaluate_checkpoint, format_table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling, however it is loaded
from quality_report import (CEILING_METRICS, LONG_JOBS, NAMES, VARIANT_DATASETS,  # noqa: E402
                            VARIANTS, markdown)

REPO = Path(__file__).resolve().parent.parent
# --quick: a tiny model, a few training steps and metric iterations (smoke test only)
QUICK_MODEL = dict(hidden=16, enc_blocks=1, code_dim=8, codebook_size=32, d_model=32, n_layer=1,
                   n_head=2, attn_heads=2)
QUICK_TRAIN = ["--steps1", "30", "--steps2", "30", "--batch-size", "16",
               *(f"--set={k}={v}" for k, v in QUICK_MODEL.items())]
QUICK_ITERATIONS = {"discriminative": 20, "predictive": 20, "context_fid": 5}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def previous_report(path: Path, settings: dict) -> dict:
    """The datasets of an earlier report at `path` made with the same settings (kept unless
    --redo), else an empty report."""
    empty = {"datasets": {}, "variants": {}}
    if not path.exists():
        return empty
    old = json.loads(path.read_text())
    same = all(old.get(k) == v for k, v in settings.items())
    if not same or any("commit" not in r for r in old.get("datasets", {}).values()):
        print(f"{path}: made with other settings; starting a new report", flush=True)
        return empty
    return {"datasets": old["datasets"], "variants": old.get("variants", {})}


def stale_config(entry: dict, variant: str | None, args: argparse.Namespace, seq_len: int) -> bool:
    """Whether an entry's recorded model config (entries before 2026-12-08 have none) differs
    from the config its preset and overrides give now."""
    if "config" not in entry:
        return False
    name, overrides = VARIANTS[variant][:2] if variant else (args.preset, {})
    overrides = {**overrides, **(QUICK_MODEL if args.quick else {})}
    now = preset_config(name, seq_len, entry["config"]["channels"], overrides)
    return now.to_dict() != entry["config"]


def machine(device: torch.device) -> str:
    """What trained and scored a dataset: the GPU, or the CPU's model, SIMD level and threads
    (sessions run on different machines, and the budget buys steps at the machine's speed)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                 if line.startswith("model name")]
    except OSError:
        names = []
    return (f"{names[0] if names else 'CPU'}, {torch.backends.cpu.get_cpu_capability()}, "
            f"{torch.get_num_threads()} threads")


def git_commit() -> str:
    """HEAD, with "-dirty" when tracked files outside bench/results differ from it (the harness's
    own reports accumulate there), "unknown" outside a git checkout."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read-only: never touch the index

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, env=env, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no", "--",
                                             ".", ":(exclude)bench/results") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def train(name: str, ckpt: Path, args: argparse.Namespace, preset: str, overrides: dict,
          minutes: float) -> None:
    argv = ["train", "--data", name, "--seq-len", str(args.seq_len), "--preset", preset,
            "--max-minutes", str(minutes), "--seed", str(args.seed),
            "--holdout", str(args.holdout), "--device", args.device, "--out", str(ckpt), "--force",
            *(f"--set={k}={json.dumps(v)}" for k, v in overrides.items())]
    if args.data_dir:
        argv += ["--data-dir", str(args.data_dir)]
    if args.quick:
        argv += QUICK_TRAIN
    if args.quiet:
        argv.append("--quiet")
    rc = cli.main(argv)
    if rc != 0:
        raise SystemExit(f"{name}: training failed (exit code {rc}); see the error above")


def run_one(name: str, variant: str | None, args: argparse.Namespace, commit: str,
            tag: str) -> dict:
    """Train (or reuse) one dataset's model, the main table's (variant None) or a variant's,
    sample and score it: its report entry."""
    preset, overrides, factor = VARIANTS[variant][:3] if variant else (args.preset, {}, 1)
    minutes = args.train_minutes * factor
    iterations = QUICK_ITERATIONS if args.quick else None
    ckpt = args.ckpt_dir / (f"{name}_T{args.seq_len}_{variant or args.preset}_seed{args.seed}"
                            f"{'_quick' if args.quick else ''}.pt")
    reused = args.reuse and ckpt.exists()
    if reused and stale_config({"config": Engine.load(ckpt, device="cpu").cfg.to_dict()},
                               variant, args, args.seq_len):
        print(f"{tag}: {ckpt} holds another model config than the preset gives now; "
              "training again", flush=True)
        reused = False
    if reused:
        print(f"{tag}: reusing {ckpt}", flush=True)
    else:
        print(f"{tag}: training ({minutes:g} min budget) -> {ckpt}", flush=True)
        train(name, ckpt, args, preset, overrides, minutes)
    engine = Engine.load(ckpt, device=args.device)
    print(f"{tag}: sampling and scoring", flush=True)
    result = evaluate_checkpoint(engine, name, args.data_dir, repeats=args.repeats,
                                 seed=args.seed, iterations=iterations, progress=not args.quiet)
    print(format_table(result), flush=True)
    meta = engine.meta
    entry = {**result, "train_minutes": meta.get("train_minutes"), "reused": reused,
             "steps": {s: meta.get(s, {}).get("steps") for s in ("stage1", "stage2")},
             "commit": commit, "created": now(),
             **{k: meta.get("stage2", {}).get(k) for k in ("ce_per_scale", "ce_mean_token",
                                                            "heldout_ce_mean_token")},
             "precision": meta.get("stage2", {}).get("precision", "fp32"),
             "parameters": engine.model.parameter_counts()["total"],
             "config": engine.cfg.to_dict(),
             "machine": machine(engine.device)}
    if variant:
        entry |= {"preset": preset, "overrides": overrides, "train_minutes_budget": minutes}
    if args.ceiling:
        print(f"{tag}: scoring its reconstructions of the real windows (the ceiling)", flush=True)
        recon = evaluate_checkpoint(engine, name, args.data_dir, repeats=args.repeats,
                                    seed=args.seed, iterations=iterations,
                                    metrics=CEILING_METRICS, progress=not args.quiet,
                                    reconstruct=True)
        entry["ceiling"] = recon["metrics"]
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", choices=NAMED, metavar="NAME", default=list(NAMES),
                    help=f"datasets, in table order (default: {' '.join(NAMES)})")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="s", help="model size (default s)")
    ap.add_argument("--seq-len", type=int, default=24, help="window length T (default 24)")
    ap.add_argument("--long", action="store_true",
                    help="the long-window report instead, quality_long.{json,md}: "
                    + ", ".join(f"{NAMES[n]} T={T}" for n, T in LONG_JOBS)
                    + " (those of --datasets; --seq-len and --variants do not apply)")
    ap.add_argument("--train-minutes", type=float, default=30.0,
                    help="training budget per dataset, passed to train --max-minutes (default 30)")
    ap.add_argument("--data-dir", type=Path, help="folder holding the dataset files (default: "
                    "$TIMEMAR_DATA_DIR or ../shared/datasets)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats per metric (default 5)")
    ap.add_argument("--holdout", type=float, default=0.1,
                    help="fraction of each dataset kept out of training (train --holdout) for the "
                    "memorisation check; the metrics still compare with every real window "
                    "(default 0.1; 0 trains on everything)")
    ap.add_argument("--seed", type=int, default=0, help="seed for training, sampling and metrics")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    ap.add_argument("--ckpt-dir", type=Path, default=REPO / "bench" / "results" / "ckpts",
                    help="where checkpoints go (default bench/results/ckpts, git-ignored)")
    ap.add_argument("--reuse", action="store_true",
                    help="use an existing checkpoint in --ckpt-dir instead of retraining")
    ap.add_argument("--redo", action="store_true",
                    help="run datasets the report already holds (same preset, budget, holdout and "
                    "seed) again; by default they are kept and only the others run, so a table "
                    "that takes longer than one sitting accumulates over several runs")
    ap.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                    help="skip the reconstruction ceiling (Discriminative and Context-FID of the "
                    "real windows encoded and decoded, `evaluate --reconstruct`)")
    ap.add_argument("--quick", action="store_true", help="tiny model, 30+30 training steps and a "
                    "few metric iterations: a smoke test, not a result")
    ap.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results",
                    help="where quality_T{T}.json and .md go (default bench/results)")
    ap.add_argument("--variants", nargs="*", choices=list(VARIANTS), metavar="NAME",
                    default=list(VARIANTS),
                    help="ablations and model sizes run after the main table, on "
                    f"{', '.join(VARIANT_DATASETS)} (those of them in --datasets): "
                    + "; ".join(f"{k}: {v[3]}" for k, v in VARIANTS.items())
                    + " (default: all; --variants alone: none)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)

    settings = {"preset": args.preset, "seed": args.seed,
                "seq_len": None if args.long else args.seq_len,
                "quick": args.quick, "train_minutes_budget": args.train_minutes,
                "holdout": args.holdout, "repeats": args.repeats}
    json_path = args.out_dir / f"quality_{'long' if args.long else f'T{args.seq_len}'}.json"
    md_path = json_path.with_suffix(".md")
    report = previous_report(json_path, settings)
    report.update(settings, skipped={}, commit=git_commit(), device=str(resolve_device(args.device)),
                  torch=torch.__version__, created=now())
    # (variant, dataset, T, report key), in run order
    if args.long:
        jobs = [(None, n, T, f"{n}_T{T}") for n, T in LONG_JOBS if n in args.datasets]
    else:
        jobs = [(None, n, args.seq_len, n) for n in args.datasets]
        jobs += [(v, n, args.seq_len, n) for v in args.variants for n in args.datasets
                 if n in VARIANT_DATASETS]
    for name in dict.fromkeys(n for _, n, *_ in jobs):
        try:
            load_dataset(name, args.data_dir, seq_len=max(T for _, n, T, _ in jobs if n == name))
        except DataError as e:
            print(f"{name}: skipped: {e}", flush=True)
            report["skipped"][name] = str(e)
    jobs = [j for j in jobs if j[1] not in report["skipped"]]
    if not args.redo:
        for job in list(jobs):
            v, key = job[0], job[3]
            kept = (report["variants"].get(v, {}) if v else report["datasets"]).get(key)
            if kept and stale_config(kept, v, args, job[2]):
                print(f"{key}{f' ({v})' if v else ''}: run again: its model config is not what "
                      "the preset gives now", flush=True)
            elif kept:
                print(f"{key}{f' ({v})' if v else ''}: kept from commit {kept['commit'][:12]} "
                      f"({kept['created']}); --redo runs it again", flush=True)
                jobs.remove(job)
    for i, (variant, name, seq_len, key) in enumerate(jobs, 1):
        entry = run_one(name, variant, argparse.Namespace(**{**vars(args), "seq_len": seq_len}),
                        report["commit"], f"[{i}/{len(jobs)}] {key}"
                        + (f" ({variant})" if variant else ""))
        if variant:
            report["variants"].setdefault(variant, {})[key] = entry
        else:
            report["datasets"][key] = entry
        write_json(report, json_path, overwrite=True)
        md_path.write_text(markdown(report))
    if not report["datasets"] and not report["variants"]:
        print("no dataset was evaluated; nothing written")
        return 1
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
