"""Sanity numbers for the four benchmark metrics at full protocol settings.

For each dataset (default Stocks and ETTh), the protocol's windows (length 24, stride 1, of the
per-column min-max scaled series, scaled once to float32; `timemar_engine.data.WindowSet`) are
evaluated with 5 repeats:
  * real vs real: a random disjoint split of all N windows into two halves (seeded permutation,
    first floor(N/2) vs the next floor(N/2));
  * real vs wrong generators (--wrong): all N windows vs
      - shuffled: the same N windows with the time steps of each window shuffled independently
        (seeded); nearly invisible on Stocks, whose 24-day windows of scaled prices are almost flat;
      - noise: N windows of uniform noise in [0, 1] (seeded).
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

from timemar_engine.data import NAMED, MinMaxScaler, WindowSet, load_dataset  # noqa: E402
from timemar_engine.metrics import evaluate_arrays          # noqa: E402
from timemar_engine.plots import plot_evaluation            # noqa: E402

WRONG = {"shuffled": "all N windows vs the same windows, time steps shuffled per window "
                     "(seed = --seed + 1)",
         "noise": "all N windows vs N windows of uniform noise in [0, 1] (seed = --seed + 2)"}
SETTING = {"shuffled": "wrong_generator", "noise": "noise_generator"}  # keys in "settings"


def time_shuffle(x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random(x.shape[:2]), axis=1)
    return np.take_along_axis(x, order[:, :, None], axis=1)


def wrong_windows(kind: str, real: np.ndarray, seed: int) -> np.ndarray:
    """The "shuffled" or "noise" stand-in for a generator (see WRONG)."""
    if kind == "shuffled":
        return time_shuffle(real, seed + 1)
    return np.random.default_rng(seed + 2).random(real.shape).astype(real.dtype)


def fmt(res: dict) -> str:
    return "  ".join(f"{k} {v['mean']:.4f}±{v['ci95']:.4f}" for k, v in res["metrics"].items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path,
                    default=Path(os.environ.get("TIMEMAR_DATA_DIR", REPO.parent / "shared" / "datasets")))
    ap.add_argument("--datasets", nargs="+", default=["stocks", "etth"], choices=NAMED)
    ap.add_argument("--wrong", nargs="+", default=list(WRONG), choices=list(WRONG),
                    help="wrong generators to compare with (default: both)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="tiny iteration counts (smoke test only)")
    ap.add_argument("--plot-datasets", nargs="*", default=["etth"],
                    help="datasets whose evaluations are plotted (none: no plots)")
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
                        **{SETTING[w]: WRONG[w] for w in args.wrong},
                        "torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "cpu_count": os.cpu_count()},
           "results": {}}
    for name in args.datasets:
        series = load_dataset(name, args.data_dir)
        real = WindowSet.from_series(series, 24, MinMaxScaler.for_series(series)).array()
        n = real.shape[0]
        perm = np.random.default_rng(args.seed).permutation(n)
        pairs = {"real_vs_real": (real[perm[: n // 2]], real[perm[n // 2: 2 * (n // 2)]]),
                 **{f"real_vs_{w}": (real, wrong_windows(w, real, args.seed)) for w in args.wrong}}
        entry = {"windows": list(real.shape)}
        for tag, (r, f) in pairs.items():
            t0 = time.perf_counter()
            res = evaluate_arrays(r, f, repeats=args.repeats, seed=args.seed, device=args.device,
                                  progress=False, iterations=iters)
            res["wall_seconds"] = time.perf_counter() - t0
            entry[tag] = res
            print(f"{name:7s} {tag:17s} N={res['n_real']:5d}/{res['n_fake']:5d}  {fmt(res)}  "
                  f"[{res['wall_seconds']:.0f}s: " +
                  ", ".join(f"{k} {v:.0f}s" for k, v in res["seconds"].items()) + "]", flush=True)
            if name in args.plot_datasets:
                plot_evaluation(r, f, args.out_dir / f"{args.out_name}_{name}_{tag}.png", seed=args.seed,
                                channel_names=series.columns, title=f"{name}: {tag.replace('_', ' ')}")
        out["results"][name] = entry
        (args.out_dir / f"{args.out_name}.json").write_text(json.dumps(out, indent=1))
    print("wrote", args.out_dir / f"{args.out_name}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
