"""CUDA paths: skipped (with the reason) where no GPU is present."""
import numpy as np
import pytest
import torch

from conftest import tiny_config
from timemar_engine.checkpoint import save_checkpoint
from timemar_engine.config import TrainConfig
from timemar_engine.data import MinMaxScaler
from timemar_engine.engine import Engine
from timemar_engine.model import TimeMAR
from timemar_engine.training import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def test_cached_logits_match_between_cpu_and_cuda():
    cfg = tiny_config()
    cpu = TimeMAR(cfg).eval()
    gpu = TimeMAR(cfg).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    idx = [torch.randint(cfg.codebook_size, (4, s)) for s in cfg.scales]
    with torch.no_grad():
        a = cpu.gpt(cpu.vqvae.quant.teacher_inputs(idx))
        b = gpu.gpt(gpu.vqvae.quant.teacher_inputs([i.cuda() for i in idx]))
        x_a = cpu.vqvae.decode(cpu.vqvae.quant.decode_indices(idx))
        x_b = gpu.vqvae.decode(gpu.vqvae.quant.decode_indices([i.cuda() for i in idx]))
    torch.testing.assert_close(b.cpu(), a, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(x_b.cpu(), x_a, atol=2e-3, rtol=2e-3)


def test_train_and_sample_on_cuda(tmp_path):
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(size=(300, 3)), 0)
    sc = MinMaxScaler.fit(walk)
    w = np.lib.stride_tricks.sliding_window_view(sc.to_unit(walk), 24, axis=0).transpose(0, 2, 1)
    tr = Trainer(TimeMAR(tiny_config()), w.astype(np.float32), sc, ["a", "b", "c"],
                 TrainConfig(batch_size=32, stage1_steps=40, stage2_steps=40, warmup=5),
                 tmp_path / "m.pt", torch.device("cuda"), progress=False)
    tr.run((1, 2))
    assert tr.meta["stage2"]["ce_mean_token"] < np.log(32)
    e = Engine.load(tmp_path / "m.pt", device="cuda")
    x = e.sample(100, seed=1, batch_size=64)
    y = e.sample(100, seed=1, batch_size=64)
    assert x.shape == (100, 24, 3) and np.isfinite(x).all()
    np.testing.assert_array_equal(x, y)


def test_default_model_on_cuda():
    e = Engine.load(device="cuda")
    x = e.sample(2000, seed=0)
    assert np.isfinite(x).all() and x.shape[0] == 2000


def test_engine_cuda_graphs_replay_the_eager_loop(monkeypatch):
    """The captured CUDA graph gives what the same loop gives uncaptured (bf16, Triton attention)."""
    e = Engine.load(device="cuda", backend="engine")
    x = e.sample(3000, seed=0, batch_size=1024, scale="model")
    monkeypatch.setenv("TIMEMAR_CUDA_GRAPHS", "0")
    y = e.sample(3000, seed=0, batch_size=1024, scale="model")
    np.testing.assert_allclose(x, y, atol=1e-4, rtol=0)
    assert e.info()["backend"] == "engine"


def test_engine_bf16_samples_match_eager_distribution():
    """bf16 engine vs fp32 eager on CUDA: a discriminative classifier cannot tell them apart."""
    from timemar_engine.metrics import discriminative_score

    a = Engine.load(device="cuda", backend="eager").sample(3000, seed=1, scale="unit")
    b = Engine.load(device="cuda", backend="eager").sample(3000, seed=2, scale="unit")
    c = Engine.load(device="cuda", backend="engine").sample(3000, seed=3, scale="unit")
    base = discriminative_score(a, b, seed=0, iterations=600, device="cuda")
    got = discriminative_score(a, c, seed=0, iterations=600, device="cuda")
    print(f"discriminative on CUDA: eager vs eager {base:.4f}, bf16 engine vs eager {got:.4f}")
    assert got <= base + 0.04 and got < 0.08
