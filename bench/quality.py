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
no coarse-seasonal guidance, no multi-scale, preset `l`, twice the budget) run on Stocks, ETTh and Energy, into
the same report (--variants picks them; --variants alone runs none).

A report made with the same settings is continued: datasets it already holds are kept (with the
commit and date that produced them) and only the others run, so the full table, hours of CPU,
accumulates over several runs of the same command; --redo runs them again.

    python bench/quality.py --data-dir ../shared/datasets --train-minutes 30
    python bench/quality.py --datasets sines stocks --reuse --redo  # re-score saved checkpoints
    python bench/quality.py --datasets sines --quick --out-dir /tmp/q  # smoke test, ~30 s on CPU
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

from timemar_engine import cli
from timemar_engine.config import PRESETS
from timemar_engine.data import NAMED, DataError, load_dataset
from timemar_engine.backends import resolve_device
from timemar_engine.engine import Engine
from timemar_engine.evaluation import evaluate_checkpoint, format_table, write_json

REPO = Path(__file__).resolve().parent.parent
NAMES = {"sines": "Sines", "stocks": "Stocks", "etth": "ETTh", "mujoco": "MuJoCo",
         "energy": "Energy", "fmri": "fMRI"}
METRIC_NAMES = {"context_fid": "Context-FID", "correlational": "Correlational",
                "discriminative": "Discriminative", "predictive": "Predictive"}
OURS, ORIGINAL = "TimeMAR (ours)", "Original (real data)"
# Diffusion-TS paper, Table 1 (T = 24), mean ± 95% t half-width over 5 repeats, as copied in
# PROTOCOL.md section 2.6. Columns: sines stocks etth mujoco energy fmri.
TABLE1 = {
    ("context_fid", "Diffusion-TS"): "0.006±.000 0.147±.025 0.116±.010 0.013±.001 0.089±.024 0.105±.006",
    ("correlational", "Diffusion-TS"): "0.015±.004 0.004±.001 0.049±.008 0.193±.027 0.856±.147 1.411±.042",
    ("discriminative", "Diffusion-TS"): "0.006±.007 0.067±.015 0.061±.009 0.008±.002 0.122±.003 0.167±.023",
    ("predictive", "Diffusion-TS"): "0.093±.000 0.036±.000 0.119±.002 0.007±.000 0.250±.000 0.099±.000",
    ("predictive", ORIGINAL): "0.094±.001 0.036±.001 0.121±.005 0.007±.001 0.250±.003 0.090±.001",
    ("context_fid", "TimeGAN"): "0.101±.014 0.103±.013 0.300±.013 0.563±.052 0.767±.103 1.292±.218",
    ("discriminative", "TimeGAN"): "0.011±.008 0.102±.021 0.114±.055 0.238±.068 0.236±.012 0.484±.042",
}
# Same paper, Table 2 (long windows, Diffusion-TS, means only), PROTOCOL.md section 2.6.
TABLE2 = {
    64: {("context_fid", "Diffusion-TS"): {"etth": "0.631", "energy": "0.135"},
         ("discriminative", "Diffusion-TS"): {"etth": "0.106", "energy": "0.078"}},
    128: {("context_fid", "Diffusion-TS"): {"etth": "0.787", "energy": "0.087"},
          ("discriminative", "Diffusion-TS"): {"etth": "0.144", "energy": "0.143"}},
    256: {("context_fid", "Diffusion-TS"): {"etth": "0.423", "energy": "0.126"},
          ("discriminative", "Diffusion-TS"): {"etth": "0.060", "energy": "0.290"}},
}
# Ablations and model size, beside the main table (the --preset column): name -> preset, model
# overrides, training-budget factor, what it is. Each runs on VARIANT_DATASETS (within --datasets).
VARIANTS = {
    "single-path": ("s", {"decomposition": False, "guidance": False}, 1,
                    "no decomposition: one encoder / decoder path on the window"),
    "no-guidance": ("s", {"guidance": False}, 1,
                    "the fine decoder path without the coarse-seasonal prior"),
    "one-scale": ("s", {"multiscale": False}, 1,
                  "no multi-scale: one token map of the latent length, predicted token by token"),
    "l": ("l", {}, 1, "preset `l`, same budget"),
    "s-2x": ("s", {}, 2, "preset `s`, twice the budget"),
    "l-2x": ("l", {}, 2, "preset `l`, twice the budget"),
}
VARIANT_DATASETS = ("stocks", "etth", "energy")
# --quick: a tiny model, a few training steps and metric iterations (smoke test only)
QUICK_TRAIN = ["--steps1", "30", "--steps2", "30", "--batch-size", "16",
               *(f"--set={kv}" for kv in ("hidden=16", "enc_blocks=1", "code_dim=8",
                                          "codebook_size=32", "d_model=32", "n_layer=1",
                                          "n_head=2", "attn_heads=2"))]
QUICK_ITERATIONS = {"discriminative": 20, "predictive": 20, "context_fid": 5}


CEILING_METRICS = ("discriminative", "context_fid")
CEILING = "TimeMAR reconstructions (ceiling)"


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


def reference(seq_len: int) -> dict[tuple[str, str], dict[str, str]]:
    """Published numbers for this window length: {(metric, method): {dataset: "mean±h"}}."""
    if seq_len == 24:
        return {k: dict(zip(NAMES, row.split())) for k, row in TABLE1.items()}
    return TABLE2.get(seq_len, {})


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


def fmt(mean: float, ci: float | None) -> str:
    """0.123±.004, the paper's style."""
    return f"{mean:.3f}" if ci is None else f"{mean:.3f}±{ci:.3f}".replace("±0.", "±.")


def markdown(report: dict) -> str:
    """The results table (metric x method rows, dataset columns) and the training summary."""
    done = {n: report["datasets"][n] for n in NAMES if n in report["datasets"]}  # table order
    ref = reference(report["seq_len"])
    names = list(done)
    lines = [f"# TimeMAR sample quality, T = {report['seq_len']}", ""]
    if report["quick"]:
        lines += ["**Quick smoke run (tiny model, few steps and metric iterations): not a "
                  "benchmark result.**", ""]
    repeats = {r["repeats"] for r in done.values()}
    lines += [f"Preset `{report['preset']}`, seed {report['seed']}, training budget "
              f"{report['train_minutes_budget']:g} min per dataset, holdout {report['holdout']:g}, "
              f"last run: commit `{report['commit']}`, device {report['device']}, torch "
              f"{report['torch']}, {report['created']} (each dataset's commit: below).",
              f"All windows of each dataset in [0, 1] vs as many generated windows; "
              f"mean ± 95% t half-width over {'/'.join(map(str, sorted(repeats))) or '?'} "
              "repeats; lower is better. Reference rows: Diffusion-TS paper, Table 1 (T = 24) "
              "or Table 2 (T = 64/128/256), copied in PROTOCOL.md section 2.6.", "",
              "| metric | method | " + " | ".join(NAMES[n] for n in names) + " |",
              "|---|---|" + "---|" * len(names)]
    for metric, label in METRIC_NAMES.items():
        ours = [done[n]["metrics"].get(metric) for n in names]
        lines.append(f"| {label} | {OURS} | "
                     + " | ".join(fmt(m["mean"], m["ci95"]) if m else "—" for m in ours) + " |")
        if metric in CEILING_METRICS and any("ceiling" in done[n] for n in names):
            cells = [done[n].get("ceiling", {}).get(metric) for n in names]
            lines.append(f"| {label} | {CEILING} | "
                         + " | ".join(fmt(m["mean"], m["ci95"]) if m else "—" for m in cells)
                         + " |")
        for (m, method), row in ref.items():
            if m == metric:
                lines.append(f"| {label} | {method} | "
                             + " | ".join(row.get(n, "—") for n in names) + " |")
    lines += ["", f"{CEILING}: the real windows encoded to tokens and decoded "
              "(`evaluate --reconstruct`), the best the samples could score with this tokenizer; "
              "samples far above it point at the transformer, near it at the VQ-VAE.", "",
              "| dataset | windows | train minutes | steps (stage 1 / 2) | stage-2 arithmetic | "
              "stage-2 cross-entropy per scale (nats) | sampling s | machine | checkpoint | "
              "commit, date |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for n, r in done.items():
        ce = " ".join(f"{c:.2f}" for c in r.get("ce_per_scale") or [])
        if r.get("heldout_ce_mean_token") is not None:
            ce += (f"; per token {r['ce_mean_token']:.2f} "
                   f"(held-out {r['heldout_ce_mean_token']:.2f})")
        lines.append(f"| {NAMES[n]} | {r['n_real']} | {r['train_minutes']} | "
                     f"{r['steps']['stage1']} / {r['steps']['stage2']} | "
                     f"{r.get('precision', 'fp32')} | {ce} | "
                     f"{r['sample_seconds']:.1f} | {r.get('machine', '—')} | "
                     f"`{Path(r['ckpt']).name}`"
                     f"{' (reused)' if r['reused'] else ''} | `{r['commit'][:12]}`, "
                     f"{r['created'][:10]} |")
    lines += ["", "Memorisation (`evaluate`'s check, `timemar_engine/metrics/memorization.py`), "
              "against real windows held out of training: near-copies (within RMS 1e-3 of a "
              "training window; the flag), and the share of generated windows under the held-out "
              "windows' 5% quantile of the distance to the closest training window (DCR) and of "
              "that distance over the distance to other held-out windows (NNDR): ~5% for new "
              "data, towards 100% for copies.", "",
              "| dataset | near-copies (held-out real) | DCR under held-out 5% | NNDR under "
              "held-out 5% | held-out windows | flag |", "|---|---|---|---|---|---|"]
    for n, r in done.items():
        m = r.get("memorization") or {}
        if "dcr" not in m:
            lines.append(f"| {NAMES[n]} | {m.get('skipped', 'not run')} | | | | |")
            continue
        seen = "" if m["holdout_unseen"] else " (seen in training)"
        lines.append(f"| {NAMES[n]} | {100 * m['near_copies']:.2f}% "
                     f"({100 * m['probe_near_copies']:.2f}%) | "
                     f"{100 * m['dcr']['below_probe_q05']:.1f}% | "
                     f"{100 * m['nndr']['below_probe_q05']:.1f}% | "
                     f"{m['n_reference'] + m['n_probe']}{seen} | "
                     f"{'SUSPECT' if m['suspect'] else 'ok'} |")
    lines += variants_markdown(report)
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{NAMES[n]} ({why})"
                                             for n, why in report["skipped"].items())]
    return "\n".join(lines) + "\n"


def variants_markdown(report: dict) -> list[str]:
    """The ablations and model sizes, each dataset's main-table row first (empty without any)."""
    variants = report.get("variants") or {}
    names = [n for n in NAMES if any(n in v for v in variants.values())]
    if not names:
        return []
    lines = ["", "## Ablations and model size", "",
             "Each variant trained and scored as the main table (same seed, holdout and "
             "repeats); " + "; ".join(f"`{k}`: {v[3]}" for k, v in VARIANTS.items()) + ".", "",
             "| dataset | model | parameters | train minutes (budget) | steps (stage 1 / 2) | "
             + " | ".join(METRIC_NAMES.values()) + " | commit, date |",
             "|---|---|---|---|---|" + "---|" * len(METRIC_NAMES) + "---|"]
    for n in names:
        rows = [(f"`{report['preset']}` (main table)", report["datasets"][n],
                 report["train_minutes_budget"])] if n in report["datasets"] else []
        rows += [(f"`{v}`", variants[v][n], variants[v][n]["train_minutes_budget"])
                 for v in VARIANTS if n in variants.get(v, {})]
        for label, r, budget in rows:
            cells = [fmt(m["mean"], m["ci95"]) if (m := r["metrics"].get(k)) else "—"
                     for k in METRIC_NAMES]
            params = f"{r['parameters'] / 1e6:.2f}M" if "parameters" in r else "—"
            lines.append(f"| {NAMES[n]} | {label} | {params} | {r['train_minutes']} ({budget:g}) | "
                         f"{r['steps']['stage1']} / {r['steps']['stage2']} | "
                         + " | ".join(cells) + f" | `{r['commit'][:12]}`, {r['created'][:10]} |")
    return lines


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

    settings = {"preset": args.preset, "seed": args.seed, "seq_len": args.seq_len,
                "quick": args.quick, "train_minutes_budget": args.train_minutes,
                "holdout": args.holdout, "repeats": args.repeats}
    json_path = args.out_dir / f"quality_T{args.seq_len}.json"
    md_path = json_path.with_suffix(".md")
    report = previous_report(json_path, settings)
    report.update(settings, skipped={}, commit=git_commit(), device=str(resolve_device(args.device)),
                  torch=torch.__version__, created=now())
    for name in args.datasets:
        try:
            load_dataset(name, args.data_dir, seq_len=args.seq_len)
        except DataError as e:
            print(f"{name}: skipped: {e}", flush=True)
            report["skipped"][name] = str(e)
    ok = [n for n in args.datasets if n not in report["skipped"]]
    jobs = [(None, n) for n in ok] + [(v, n) for v in args.variants for n in ok
                                      if n in VARIANT_DATASETS]
    if not args.redo:
        for v, n in list(jobs):
            kept = (report["variants"].get(v, {}) if v else report["datasets"]).get(n)
            if kept:
                print(f"{n}{f' ({v})' if v else ''}: kept from commit {kept['commit'][:12]} "
                      f"({kept['created']}); --redo runs it again", flush=True)
                jobs.remove((v, n))
    for i, (variant, name) in enumerate(jobs, 1):
        entry = run_one(name, variant, args, report["commit"], f"[{i}/{len(jobs)}] {name}"
                        + (f" ({variant})" if variant else ""))
        if variant:
            report["variants"].setdefault(variant, {})[name] = entry
        else:
            report["datasets"][name] = entry
        write_json(report, json_path, overwrite=True)
        md_path.write_text(markdown(report))
    if not report["datasets"] and not report["variants"]:
        print("no dataset was evaluated; nothing written")
        return 1
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
