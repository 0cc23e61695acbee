"""Per-channel mean / std / lag-1 autocorrelation of sampled vs real windows, side by side.

python bench/window_stats.py --ckpt model.pt --data stocks --data-dir ../shared/datasets [--n N]
"""
import argparse
import json

from timemar_engine.engine import Engine
from timemar_engine.evaluation import real_windows, window_stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--n", type=int, help="samples (default: as many as real windows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the table as JSON")
    args = p.parse_args()
    engine = Engine.load(args.ckpt)
    real_unit, scaler = real_windows(args.data, args.data_dir, engine.seq_len)
    real = scaler.from_unit(real_unit)
    fake = engine.sample(args.n or len(real), seed=args.seed)
    r, f = window_stats(real), window_stats(fake)
    print(f"{len(real)} real vs {len(fake)} sampled windows (data units)")
    print(f"{'channel':<12}{'mean real':>13}{'mean fake':>13}{'std real':>12}{'std fake':>12}"
          f"{'lag1 real':>11}{'lag1 fake':>11}")
    rows = []
    for c, name in enumerate(engine.channels):
        rows.append({"channel": name, **{f"{k}_{s}": float(d[k][c]) for k in r
                                          for s, d in (("real", r), ("fake", f))}})
        print(f"{name:<12}{r['mean'][c]:>13.4g}{f['mean'][c]:>13.4g}{r['std'][c]:>12.4g}"
              f"{f['std'][c]:>12.4g}{r['lag1'][c]:>11.4f}{f['lag1'][c]:>11.4f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"n_real": len(real), "n_fake": len(fake), "channels": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
