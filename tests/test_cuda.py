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


def _cuda_ops():
    from timemar_engine import extension
    if not extension.available(torch.device("cuda")):
        pytest.skip(f"extension CUDA ops unavailable: {extension.unavailable_reason() or 'built without nvcc'}")
    return extension


@pytest.mark.parametrize("T", [24, 256])
@pytest.mark.parametrize("B", [1, 1037])
def test_extension_interp_accumulate_cuda_matches_cpu_float64(T, B):
    from timemar_engine.config import preset
    ext = _cuda_ops()
    scales = preset("xs", T, 3).scales
    gen = torch.Generator().manual_seed(T + B)
    L, D, V = scales[-1], 16, 97
    for k, s in enumerate(scales):
        nxt = scales[k + 1] if k + 1 < len(scales) else 0
        f = torch.randn(B, D, L, generator=gen, dtype=torch.float64)
        cb = torch.randn(V, D, generator=gen, dtype=torch.float64)
        idx = torch.randint(V, (B, s), generator=gen)
        idx[0, 0], idx[-1, -1] = 0, V - 1
        w = torch.randn(D, D, 3, generator=gen, dtype=torch.float64) / (3 * D) ** 0.5
        b = torch.randn(D, generator=gen, dtype=torch.float64)
        ref = f.clone()
        want = ext.interp_accumulate_reference(ref, cb, idx, w, b, 0.4, nxt)
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
            g = f.to("cuda", dtype)
            down = ext.interp_accumulate(g, cb.to("cuda", dtype), idx.cuda(), w.to("cuda", dtype),
                                         b.to("cuda", dtype), 0.4, nxt)
            torch.testing.assert_close(g.double().cpu(), ref, atol=tol, rtol=tol)
            torch.testing.assert_close(down.double().cpu(), want, atol=tol, rtol=tol)


def test_extension_decode_epilogue_cuda_is_bit_identical_to_cpu():
    ext = _cuda_ops()
    gen = torch.Generator().manual_seed(0)
    parts = [torch.randn(1037, 5, 24, generator=gen) for _ in range(3)]
    span = torch.tensor([1.0, 0.0, 3e7, 2.5, 1e-3], dtype=torch.float64)
    lo = torch.tensor([-3.0, 4.0, 1e6, 7.5, -1e-3], dtype=torch.float64)
    want = ext.decode_epilogue(*parts, span, lo)
    got = ext.decode_epilogue(*(p.cuda() for p in parts), span.cuda(), lo.cuda())
    assert torch.equal(got.cpu(), want)
    assert torch.equal(ext.decode_epilogue(*(p.cuda() for p in parts)).cpu(),
                       ext.decode_epilogue(*parts))
