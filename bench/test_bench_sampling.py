"""Eager sampling throughput of the packaged default model (windows per second, CPU or CUDA).

Run: pytest bench/ --benchmark-only"""
import pytest
import torch

from timemar_engine.engine import Engine
from timemar_engine.sampling import generate


@pytest.fixture(scope="module")
def engine():
    return Engine.load(device="auto")


@pytest.mark.parametrize("batch", [256, 2048])
def test_eager_generate(benchmark, engine, batch):
    gen = torch.Generator(engine.device).manual_seed(0)

    def run():
        x = generate(engine.model, batch, gen)
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        return x

    run()  # warm-up
    benchmark.pedantic(run, rounds=5, iterations=1)
    benchmark.extra_info["windows_per_s"] = batch / benchmark.stats.stats.median
    benchmark.extra_info["device"] = str(engine.device)
