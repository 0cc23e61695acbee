"""Block-causal multi-scale attention: SDPA + boolean mask vs FlexAttention vs the Triton kernel, with
a plain GEMM of the model's width as the roofline reference (H=4, D=64: the `s` preset).

Run: pytest bench/test_bench_attention.py --benchmark-only
Quick (CI, small shapes): TIMEMAR_BENCH_QUICK=1 pytest bench/test_bench_attention.py --benchmark-disable
FlexAttention is compiled on CUDA and run eagerly on CPU (compiling it there takes 15-40 s per shape;
set TIMEMAR_BENCH_FLEX_COMPILE=1 to compile anyway). Attention GFLOP/s count only allowed pairs:
4 * D * pairs * B * H."""
import functools
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from timemar_engine.config import default_scales
from timemar_engine.gpt import scale_ids

QUICK = os.environ.get("TIMEMAR_BENCH_QUICK") == "1"
FLEX_COMPILE = os.environ.get("TIMEMAR_BENCH_FLEX_COMPILE") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
H, D = 4, 64
SCHEDULES = {"T24": default_scales(24), "T256": default_scales(256)}
BATCHES = (1, 16) if QUICK else (1, 256, 4096, 16384)
# Rough CPU throughput (dense FLOP/s, 2 cores) used to skip cases where one call would take > 2 s.
CPU_FLOPS = {"sdpa": 1e10, "flex": 2e9, "gemm": 2e10}
CPU_MAX_S = 2.0


def _pairs(scales) -> int:
    """Allowed (query, key) pairs: query of scale a sees every key of scales <= a."""
    total, seen = 0, 0
    for s in scales:
        seen += s
        total += s * seen
    return total


@functools.lru_cache(maxsize=None)
def _flex():
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:  # pragma: no cover - torch < 2.5
        pytest.skip(f"FlexAttention unavailable in this torch: {e}")
    compile_it = DEVICE.type == "cuda" or FLEX_COMPILE
    if compile_it:  # one graph per (schedule, batch): stay under dynamo's recompile limit (default 8)
        import torch._dynamo.config as dcfg

        dcfg.recompile_limit = max(dcfg.recompile_limit, 64)
    return (torch.compile(flex_attention) if compile_it else flex_attention), create_block_mask, compile_it


@functools.lru_cache(maxsize=None)
def _block_mask(scales):
    _, create_block_mask, _ = _flex()
    sid = scale_ids(scales).to(DEVICE)
    L = len(sid)
    return create_block_mask(lambda b, h, q, k: sid[k] <= sid[q], None, None, L, L, device=DEVICE)


def _cpu_guard(variant: str, flops: float) -> None:
    if DEVICE.type == "cpu" and flops / CPU_FLOPS[variant] > CPU_MAX_S:
        pytest.skip(f"{variant} on CPU: ~{flops / CPU_FLOPS[variant]:.1f} s per call (> {CPU_MAX_S:.0f} s), "
                    "run on a GPU")


def _timed(benchmark, fn, tokens: int, flops: float, **info):
    def run():
        y = fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return y

    rounds = 10 if DEVICE.type == "cuda" else 3
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(device=torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
                                dtype=str(DTYPE).removeprefix("torch."), flops=flops, **info)
    if benchmark.stats is not None:  # None under --benchmark-disable
        med = benchmark.stats.stats.median
        benchmark.extra_info["tokens_per_s"] = tokens / med
        benchmark.extra_info["gflops_per_s"] = flops / med / 1e9


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("sched", list(SCHEDULES), ids=str)
@pytest.mark.parametrize("variant", ["sdpa", "flex", "triton"])
def test_block_causal_attention(benchmark, variant, sched, batch):
    scales = SCHEDULES[sched]
    L = sum(scales)
    pairs = _pairs(scales)
    flops = 4.0 * D * pairs * batch * H
    if variant == "triton" and DEVICE.type != "cuda":
        pytest.skip("Triton kernel needs a CUDA GPU here; interpreter timings are meaningless")
    _cpu_guard(variant if variant != "triton" else "sdpa", 4.0 * D * L * L * batch * H)
    g = torch.Generator(DEVICE).manual_seed(0)
    q, k, v = (torch.randn(batch, H, L, D, generator=g, device=DEVICE, dtype=DTYPE) for _ in range(3))
    info = dict(variant=variant, batch=batch, L=L, heads=H, head_dim=D, allowed_pairs=pairs,
                dense_pairs=L * L)

    if variant == "sdpa":
        sid = scale_ids(scales).to(DEVICE)
        mask = sid[None, :] <= sid[:, None]
        fn = functools.partial(F.scaled_dot_product_attention, q, k, v, attn_mask=mask)
    elif variant == "flex":
        flex, _, compiled = _flex()
        info["flex_mode"] = "compiled" if compiled else "eager"
        bm = _block_mask(scales)

        def fn():
            with warnings.catch_warnings():  # eager flex warns "use torch.compile" on every call
                warnings.simplefilter("ignore")
                return flex(q, k, v, block_mask=bm)
    else:
        attn = pytest.importorskip("timemar_engine.kernels.attention", reason="triton not installed")
        fn = functools.partial(attn.block_causal_attention, q, k, v, scales)
    _timed(benchmark, fn, batch * L, flops, **info)


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("sched", list(SCHEDULES), ids=str)
def test_gemm_roofline(benchmark, sched, batch):
    """(B*L, H*D) x (H*D, H*D): one projection of the same tokens, the attainable-FLOP/s reference."""
    L = sum(SCHEDULES[sched])
    C = H * D
    flops = 2.0 * batch * L * C * C
    _cpu_guard("gemm", flops)
    g = torch.Generator(DEVICE).manual_seed(0)
    x = torch.randn(batch * L, C, generator=g, device=DEVICE, dtype=DTYPE)
    w = torch.randn(C, C, generator=g, device=DEVICE, dtype=DTYPE)
    _timed(benchmark, functools.partial(torch.mm, x, w), batch * L, flops,
           variant="gemm", batch=batch, L=L, shape=[batch * L, C, C])
    if benchmark.stats is not None:
        benchmark.extra_info["gemm_gflops_per_s"] = benchmark.extra_info["gflops_per_s"]
