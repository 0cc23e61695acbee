"""One table from a pytest-benchmark JSON: median, throughput, achieved and GEMM GFLOP/s.

Usage: python bench/summary.py bench.json"""
import json
import sys

RATES = ("windows_per_s", "rows_per_s", "tokens_per_s")
ACHIEVED = ("gflops", "gflops_per_s", "gflop_s")  # the benchmark files' names for the same thing
GEMMS = ("gemm_gflops_per_s", "gemm_model_width_gflops")


def rows(bench: dict) -> list[tuple[str, ...]]:
    out = []
    for r in bench["benchmarks"]:
        info = r.get("extra_info", {})
        rate = next(((k.removesuffix("_per_s"), info[k]) for k in RATES if k in info), None)
        gemm = next((info[k] for k in GEMMS if k in info), None)
        achieved = next((info[k] for k in ACHIEVED if k in info), None)
        out.append((r["name"], f"{r['stats']['median'] * 1e3:.2f}",
                    f"{rate[1]:,.0f} {rate[0]}/s" if rate else "",
                    f"{achieved:.1f}" if achieved is not None else "",
                    f"{gemm:.1f}" if gemm else "",
                    f"{info['speedup_vs_eager']:.2f}x" if "speedup_vs_eager" in info else ""))
    return out


def main(path: str) -> None:
    bench = json.load(open(path))
    head = ("benchmark", "median ms", "throughput", "GFLOP/s", "GEMM GFLOP/s", "vs eager")
    table = [head] + rows(bench)
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    devices = sorted({r.get("extra_info", {}).get("device", "?") for r in bench["benchmarks"]})
    cpu = bench.get("machine_info", {}).get("cpu", {}).get("brand_raw", "?")
    print(f"devices: {', '.join(devices)} (host CPU: {cpu})")
    for r in table:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(r, widths))))


if __name__ == "__main__":
    main(sys.argv[1])
