"""Nearest-codebook lookup (VQ argmin): eager cdist+argmin vs the full addmm form vs the chunked CPU
path vs the Triton kernel, with a plain GEMM of the same shape as the roofline reference.

Run: pytest bench/test_bench_lookup.py --benchmark-only
Quick (CI): TIMEMAR_BENCH_QUICK=1 pytest bench/test_bench_lookup.py --benchmark-disable -q

extra_info: device, rows_per_s (N / median), gflop_s (2 N V D / median) and peak_extra_mb, the peak
memory of one call above the inputs (CUDA: max_memory_allocated delta; CPU: peak RSS of one call in a
fresh subprocess, see `peak_extra_bytes`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from timemar_engine.kernels.codebook import nearest_code_cpu, nearest_code_reference

QUICK = os.environ.get("TIMEMAR_BENCH_QUICK") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
D = 32
NS = [1000] if QUICK else [10**4, 10**5, 10**6]
VS = [256] if QUICK else [256, 1024, 4096]
ACCEPTANCE = (10**6, 1024)  # must run on CPU for cdist+argmin and nearest_code_cpu (time and memory)
# distance cells (N x V) per second on this 2-core CPU, measured at N x V ~ 1e9, rounded down
CPU_CELLS_PER_S = {"cdist+argmin": 1.5e8, "addmm_full": 1e8, "nearest_code_cpu": 8e8, "gemm": 3.5e8}
CPU_MAX_CALL_S = 3.0
CPU_MAX_MATRIX = 4 << 30  # bytes of one fp32 N x V matrix


def addmm_full(x, e):
    return ((e * e).sum(-1) - 2 * x @ e.T).argmin(-1)


def triton_kernel(x, e):
    from timemar_engine.kernels.codebook import nearest_code_triton
    return nearest_code_triton(x, e)


def gemm(x, e):
    return torch.mm(x, e.T)


VARIANTS = {"cdist+argmin": nearest_code_reference, "addmm_full": addmm_full,
            "nearest_code_cpu": nearest_code_cpu, "triton": triton_kernel, "gemm": gemm}
MATERIALISES = {"cdist+argmin", "addmm_full", "gemm"}  # hold a whole N x V matrix


def make_inputs(N: int, V: int, d: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(N, d, generator=g).to(device), torch.randn(V, d, generator=g).to(device))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _peak_child(variant: str, N: int, V: int, d: int) -> dict:
    """Runs in the subprocess: inputs, a small warm-up, reset the peak RSS, one call, read the peak."""
    import gc
    import resource
    x, e = make_inputs(N, V, d, "cpu")
    fn = VARIANTS[variant]
    fn(x[:64], e)  # load BLAS kernels and thread pools outside the measurement
    gc.collect()
    base = _status_kb("VmRSS")
    try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0): the peak then starts at `base`
        Path("/proc/self/clear_refs").write_text("5")
        method = "VmHWM after clear_refs"
    except OSError:
        method = "ru_maxrss (lower bound if an earlier peak was higher)"
    fn(x, e)
    peak = _status_kb("VmHWM") if method.startswith("VmHWM") else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_extra_bytes": max(0, peak - base) * 1024, "base_rss_bytes": base * 1024, "method": method}


def peak_extra_bytes(variant: str, N: int, V: int, d: int = D, device: str = DEVICE) -> dict:
    """Peak memory of one call above the inputs. CUDA: in process, max_memory_allocated delta.
    CPU: a fresh subprocess (so earlier allocations and caches do not hide the peak) reads the peak RSS
    of the call (VmHWM, reset after the inputs exist). Counts the output too."""
    if device == "cuda":
        x, e = make_inputs(N, V, d, device)
        fn = VARIANTS[variant]
        fn(x[:64], e)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(x, e)
        torch.cuda.synchronize()
        return {"peak_extra_bytes": torch.cuda.max_memory_allocated() - base,
                "method": "torch.cuda.max_memory_allocated delta"}
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import test_bench_lookup as m; "
            f"print(json.dumps(m._peak_child({variant!r}, {N}, {V}, {d})))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def skip_reason(variant: str, N: int, V: int) -> str | None:
    if variant == "triton" and DEVICE != "cuda":
        return "Triton kernel needs a CUDA GPU here; interpreter timings are meaningless"
    if variant == "nearest_code_cpu" and DEVICE == "cuda":
        return "nearest_code_cpu is the CPU path"
    if DEVICE == "cuda":
        return None
    matrix = N * V * 4
    if variant in MATERIALISES and matrix > CPU_MAX_MATRIX:
        return f"the fp32 N x V matrix would be {matrix / 2**30:.1f} GiB (> 4 GiB) on CPU"
    rate = CPU_CELLS_PER_S[variant]
    est = N * V / rate
    if est > CPU_MAX_CALL_S and not ((N, V) == ACCEPTANCE and variant in ("cdist+argmin", "nearest_code_cpu")):
        return f"one CPU call would take ~{est:.0f} s (> {CPU_MAX_CALL_S:.0f} s at ~{rate:.1e} N x V cells/s)"
    return None


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("V", VS)
@pytest.mark.parametrize("N", NS)
def test_lookup(benchmark, variant, N, V):
    reason = skip_reason(variant, N, V)
    if reason:
        pytest.skip(reason)
    x, e = make_inputs(N, V, D, DEVICE)
    fn = VARIANTS[variant]

    def run():
        out = fn(x, e)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out

    big = N * V >= 10**9
    result = benchmark.pedantic(run, rounds=3 if big else 5, iterations=1, warmup_rounds=0 if big else 1)
    if variant != "gemm" and (QUICK or benchmark.disabled):  # cheap agreement check (CI)
        assert torch.equal(result.cpu(), nearest_code_cpu(x.cpu(), e.cpu()))
    if benchmark.disabled:
        return
    median = benchmark.stats.stats.median
    info = benchmark.extra_info
    info["device"] = torch.cuda.get_device_name() if DEVICE == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    info["rows_per_s"] = N / median
    info["gflop_s"] = 2 * N * V * D / median / 1e9
    del x, e, result
    peak = peak_extra_bytes(variant, N, V)
    info["peak_extra_mb"] = peak["peak_extra_bytes"] / 2**20
    info["peak_method"] = peak["method"]


def test_peak_helper_counts_the_matrix():
    """The CPU helper sees the N x V matrix of the materialising form (and the chunked path stays small)."""
    if DEVICE == "cuda":
        pytest.skip("checks the CPU subprocess helper")
    N, V = 20_000, 1024  # 78 MiB distance matrix
    full = peak_extra_bytes("addmm_full", N, V)["peak_extra_bytes"]
    chunked = peak_extra_bytes("nearest_code_cpu", N, V)["peak_extra_bytes"]
    assert full >= N * V * 4 * 0.9, full
    assert chunked < full / 4, (chunked, full)
