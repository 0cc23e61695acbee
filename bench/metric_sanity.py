"""Sanity numbers for the four benchmark metrics at full protocol settings.

For each dataset (default Stocks and ETTh), windows of length 24 (stride 1) of the per-column
min-max scaled series are evaluated twice with 5 repeats:
  * real vs real: a random disjoint split of all N windows into two halves (seeded permutation,
    first floor(N/2) vs the next floor(N/2));
  * real vs a wrong generator: all N windows vs the same N windows with the time steps of each
    window shuffled independently (seeded).
Writes a JSON file (and evaluation plots) under --out-dir.

    python bench/metric_sanity.py --data-dir ../shared/datasets --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from timemar_engine.metrics import evaluate_arrays  # noqa: E402
from timemar_engine.plots import plot_evaluation    # noqa: E402

FILES = {"stocks": ("stock_data.csv", ()), "etth": ("ETTh.csv", ("date",)),
         "energy": ("energydata_complete.csv", ("date",))}


def load_windows(name: str, data_dir: Path, seq_len: int = 24) -> tuple[np.ndarray, list[str]]:
    import pandas as pd
    file, drop = FILES[name]
    df = pd.read_csv(data_dir / file)
    df = df.drop(columns=[c for c in drop if c in df.columns])
    values = df.apply(pd.to_numeric).to_numpy(np.float64)   # Energy: quoted, space-padded numbers
    lo, hi = values.min(0), values.max(0)
    values = (values - lo) / np.where(hi > lo, hi - lo, 1.0)
    win = np.lib.stride_tricks.sliding_window_view(values, seq_len, axis=0).transpose(0, 2, 1)
    return np.ascontiguousarray(win), list(df.columns)


def time_shuffle(x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random(x.shape[:2]), axis=1)
    return np.take_along_axis(x, order[:, :, None], axis=1)


def fmt(res: dict) -> str:
    return "  ".join(f"{k} {v['mean']:.4f}±{v['ci95']:.4f}" for k, v in res["metrics"].items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path,
                    default=Path(os.environ.get("TIMEMAR_DATA_DIR", REPO.parent / "shared" / "datasets")))
    ap.add_argument("--datasets", nargs="+", default=["stocks", "etth"], choices=sorted(FILES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="tiny iteration counts (smoke test only)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--out-name", default="metric_sanity")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    iters = {"discriminative": 20, "predictive": 20, "context_fid": 5} if args.quick else None
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = {"settings": {"repeats": args.repeats, "seed": args.seed, "torch_threads": args.threads,
                        "device": args.device, "quick": args.quick,
                        "iterations": iters or {"discriminative": 2000, "predictive": 5000, "context_fid": 600},
                        "real_vs_real": "random disjoint halves of all N windows (permutation seed = --seed)",
                        "wrong_generator": "all N windows vs the same windows, time steps shuffled per window (seed = --seed + 1)",
                        "torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "cpu_count": os.cpu_count()},
           "results": {}}
    for name in args.datasets:
        real, cols = load_windows(name, args.data_dir)
        n = real.shape[0]
        perm = np.random.default_rng(args.seed).permutation(n)
        half_a, half_b = real[perm[: n // 2]], real[perm[n // 2: 2 * (n // 2)]]
        shuffled = time_shuffle(real, args.seed + 1)
        entry = {"windows": list(real.shape)}
        for tag, (r, f) in {"real_vs_real": (half_a, half_b), "real_vs_shuffled": (real, shuffled)}.items():
            t0 = time.perf_counter()
            res = evaluate_arrays(r, f, repeats=args.repeats, seed=args.seed, device=args.device,
                                  progress=False, iterations=iters)
            res["wall_seconds"] = time.perf_counter() - t0
            entry[tag] = res
            print(f"{name:7s} {tag:17s} N={res['n_real']:5d}/{res['n_fake']:5d}  {fmt(res)}  "
                  f"[{res['wall_seconds']:.0f}s: " +
                  ", ".join(f"{k} {v:.0f}s" for k, v in res["seconds"].items()) + "]", flush=True)
            if not args.no_plots:
                plot_evaluation(r, f, args.out_dir / f"{args.out_name}_{name}_{tag}.png", seed=args.seed,
                                channel_names=cols, title=f"{name}: {tag.replace('_', ' ')}")
        out["results"][name] = entry
        (args.out_dir / f"{args.out_name}.json").write_text(json.dumps(out, indent=1))
    print("wrote", args.out_dir / f"{args.out_name}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
