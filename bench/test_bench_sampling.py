"""End-to-end sampling: eager vs engine, for the packaged default (`xs`, each map drawn at once),
the `s` preset (T = 24: every map but the first drawn token by token) and `s` with each map drawn at
once (`s-next-scale`, causal_scales=0).

Each case records windows/s, the achieved GFLOP/s (model FLOPs counted once per window with
torch's FlopCounterMode on the eager path) and, measured in the same run, a plain fp32 GEMM of
the model's MLP width and a 2048^3 GEMM. Engine-vs-eager ratios are same-run medians.

Run: pytest bench/ --benchmark-only  (TIMEMAR_BENCH_QUICK=1: small batches, for CI)"""
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from timemar_engine.config import preset
from timemar_engine.engine import Engine, default_batch_size
from timemar_engine.backends import cpu_streams
from timemar_engine.fast_sampling import FastSampler, StreamSampler
from timemar_engine.model import TimeMAR
from timemar_engine.sampling import generate

QUICK = os.environ.get("TIMEMAR_BENCH_QUICK") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DEVICE_NAME = torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu"
MEDIANS: dict[tuple, float] = {}


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(scope="module", params=["xs", "s", "s-next-scale"])
def model(request):
    if request.param == "xs":
        m = Engine.load(device=DEVICE, backend="eager").model
    else:  # random weights: the cost of a model does not depend on its values
        torch.manual_seed(0)
        causal = {"causal_scales": 0} if request.param == "s-next-scale" else {}
        m = TimeMAR(preset("s", 24, 6, causal)).to(DEVICE).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        generate(m, 4, torch.Generator(DEVICE).manual_seed(0))
    m.flops_per_window = fc.get_total_flops() / 4
    m.preset_name = request.param
    return m


def gemm_gflops(m: int, k: int, n: int, reps: int = 5) -> float:
    """Median GFLOP/s of an fp32 (m, k) x (k, n) product on DEVICE, measured now."""
    import time
    a, b = torch.randn(m, k, device=DEVICE), torch.randn(k, n, device=DEVICE)
    out = torch.empty(m, n, device=DEVICE)
    torch.mm(a, b, out=out)
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        sync()
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / sorted(times)[reps // 2] / 1e9


@pytest.mark.parametrize("backend", ["eager", "engine", "engine-fp32"])
def test_sampling(benchmark, model, backend):
    """engine: what `Engine` runs (precision auto: int8 linear layers on CPU with the extension,
    bf16 on CUDA); engine-fp32: the same loop in fp32."""
    engine = backend.startswith("engine")
    batch = 16 if QUICK else default_batch_size(DEVICE, "engine" if engine else backend)
    gen = torch.Generator(DEVICE).manual_seed(0)
    if engine:  # what Engine runs: one batch per stream (one thread each on CPU)
        sampler = StreamSampler(model, DEVICE, cpu_streams(),
                                "fp32" if backend == "engine-fp32" else "auto")
        # as many windows per round as the eager case: the streams' start and end are included
        sizes = [batch] * max(2 * sampler.streams, default_batch_size(DEVICE, "eager") // batch)
        step = lambda: list(sampler.iter_generate(sizes, gen))  # noqa: E731
        windows = sum(sizes)
    else:
        step = lambda: generate(model, batch, gen)  # noqa: E731
        windows = batch

    def run():
        x = step()
        sync()
        return x

    benchmark.pedantic(run, rounds=2 if QUICK else 5, iterations=1, warmup_rounds=1)
    if benchmark.disabled:  # --benchmark-disable: ran once as a smoke test
        return
    med = benchmark.stats.stats.median
    MEDIANS[(model.preset_name, backend)] = windows / med
    d = model.cfg.d_model
    info = benchmark.extra_info
    info.update(device=DEVICE_NAME, preset=model.preset_name, batch=batch, windows=windows,
                windows_per_s=windows / med, gflops=model.flops_per_window * windows / med / 1e9,
                mflop_per_window=model.flops_per_window / 1e6,
                gemm_model_width_gflops=gemm_gflops(batch * max(model.cfg.scales), d, 4 * d),
                gemm_2048_gflops=gemm_gflops(*(512 if QUICK else 2048,) * 3))
    if engine:
        info["precision"] = sampler.precision
    eager = MEDIANS.get((model.preset_name, "eager"))
    if engine and eager:
        info["speedup_vs_eager"] = info["windows_per_s"] / eager


@pytest.mark.skipif(DEVICE.type != "cuda", reason="100k windows of `s` is a GPU target "
                    "(the CPU engine needs minutes for it)")
def test_100k_windows_s_preset(benchmark):
    torch.manual_seed(0)
    m = TimeMAR(preset("s", 24, 6)).to(DEVICE).eval()
    sampler, n, batch = FastSampler(m, DEVICE), 100_000, 10_000
    gen = torch.Generator(DEVICE).manual_seed(0)

    def run():
        for _ in range(n // batch):
            sampler.generate(batch, gen)
        sync()

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    if benchmark.disabled:
        return
    benchmark.extra_info.update(device=DEVICE_NAME, windows=n,
                                seconds=benchmark.stats.stats.median)
