"""The engine backend: same model, same distribution, different computation."""
import numpy as np
import pytest
import torch

from conftest import tiny_config
from timemar_engine import backends
from timemar_engine.checkpoint import save_checkpoint
from timemar_engine.data import MinMaxScaler
from timemar_engine.engine import Engine
from timemar_engine.fast_sampling import FastSampler, draw_from_logits
from timemar_engine.model import TimeMAR
from timemar_engine.sampling import filter_logits


def reference_draw(logits: np.ndarray, u: np.ndarray) -> np.ndarray:
    """float64: the first index whose cumulative probability exceeds u."""
    p = np.exp(logits - logits.max(-1, keepdims=True))
    cdf = np.cumsum(p / p.sum(-1, keepdims=True), -1)
    return (cdf <= u[:, None]).sum(-1)


def test_inverse_cdf_draw_matches_float64(rng):
    logits = rng.normal(size=(4000, 37)) * 3
    logits[:, [4, 20]] = -np.inf  # filtered codes
    u = rng.uniform(size=4000)
    got = draw_from_logits(torch.tensor(logits, dtype=torch.float32),
                           torch.tensor(u, dtype=torch.float32)).numpy()
    want = reference_draw(logits, u)
    # the float32 cdf may straddle a boundary that u sits on: allow only such cases
    p = np.exp(logits - logits.max(-1, keepdims=True))
    cdf = np.cumsum(p / p.sum(-1, keepdims=True), -1)
    near = np.abs(cdf - u[:, None]).min(-1) < 1e-5
    assert (got[~near] == want[~near]).all() and near.mean() < 0.01
    assert not np.isin(got, [4, 20]).any()
    edge = draw_from_logits(torch.tensor(logits[:3], dtype=torch.float32),
                            torch.tensor([0.0, 1 - 2 ** -24, 0.5]))
    assert (edge >= 0).all() and (edge < 37).all() and not np.isin(edge.numpy(), [4, 20]).any()


def test_inverse_cdf_draw_frequencies(rng):
    logits = torch.tensor(rng.normal(size=8) * 2, dtype=torch.float32)
    n = 200_000
    draws = draw_from_logits(logits.expand(n, -1).contiguous(), torch.rand(n, generator=torch.
                             Generator().manual_seed(0)))
    freq = np.bincount(draws.numpy(), minlength=8) / n
    p = torch.softmax(logits.double(), -1).numpy()
    assert np.abs(freq - p).max() < 4 * np.sqrt(p.max() / n)  # a 4-sigma band


@pytest.fixture
def model():
    torch.manual_seed(3)
    return TimeMAR(tiny_config(codebook_size=48, n_layer=3)).eval()


@pytest.mark.parametrize("filters", [{}, {"temperature": 0.7, "top_k": 20},
                                     {"top_p": 0.8}])
def test_engine_tokens_follow_the_eager_logits(model, filters):
    """Replaying the engine's uniforms through eager teacher-forced logits gives its tokens."""
    sampler, seed, B = FastSampler(model, torch.device("cpu")), 11, 37
    x, idx = sampler.generate(B, torch.Generator().manual_seed(seed), return_indices=True,
                              **filters)
    u = torch.rand(B, model.cfg.n_tokens, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = model.gpt(model.vqvae.quant.teacher_inputs(idx))  # (B, L, V), eager
    full = filter_logits(logits, **{"temperature": 1.0, **filters}).reshape(-1, logits.shape[-1])
    want = draw_from_logits(full, u.reshape(-1))
    got = torch.cat(idx, 1).reshape(-1)
    # float rounding may move a uniform that sits on a cdf boundary into the neighbouring code
    cdf = torch.softmax(full.double(), -1).cumsum(-1)
    near = (cdf - u.reshape(-1, 1).double()).abs().min(-1).values < 1e-5
    assert torch.equal(got[~near], want[~near]) and near.float().mean() < 0.01
    with torch.no_grad():
        ref = model.vqvae.decode(model.vqvae.quant.decode_indices(idx)).clamp(-1, 1)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=0)


def test_engine_reuses_buffers_and_is_seeded(model):
    sampler = FastSampler(model, torch.device("cpu"))
    a = sampler.generate(9, torch.Generator().manual_seed(1))
    sampler.generate(20, torch.Generator().manual_seed(2))
    b = sampler.generate(9, torch.Generator().manual_seed(1))
    c = sampler.generate(9, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(sampler._buffers) == {9, 20}


def test_engine_rejects_bad_filters(model):
    sampler = FastSampler(model, torch.device("cpu"))
    with pytest.raises(ValueError, match="temperature"):
        sampler.generate(4, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        sampler.generate(4, top_p=1.5)


def test_single_scale_schedules_are_refused_up_front():
    """One token map leaves the transformer nothing to predict: refused by the config itself,
    before any training, rather than failing after stage 1."""
    with pytest.raises(ValueError, match="at least two token maps"):
        tiny_config(scales=(6,), seq_len=24)


@pytest.fixture
def saved(tmp_path, rng):
    model = TimeMAR(tiny_config())
    lo = rng.normal(size=3)
    save_checkpoint(tmp_path / "m.pt", model, MinMaxScaler(lo, lo + 2), ["a", "b", "c"], {})
    return tmp_path / "m.pt"


def test_backend_dispatch(saved):
    assert Engine.load(saved, device="cpu").backend == "engine"  # auto on CPU
    assert Engine.load(saved, device="cpu", backend="eager").backend == "eager"
    with pytest.raises(ValueError, match="unknown backend 'warp'; choose from auto, eager, engine"):
        Engine.load(saved, device="cpu", backend="warp")
    info = Engine.load(saved, device="cpu").info()
    assert info["backend"] == "engine" and "eager" in info["backends_available"]


def test_engine_on_cuda_needs_triton(monkeypatch):
    monkeypatch.setattr(backends, "triton_available", lambda: False)
    dev = torch.device("cuda")
    with pytest.raises(ValueError, match="needs triton.*available here: eager"):
        backends.resolve_backend("engine", dev)
    assert backends.resolve_backend("auto", dev) == "eager"
    assert backends.resolve_backend("auto", torch.device("cpu")) == "engine"


def test_encode_decode_round_trip(saved, rng):
    e = Engine.load(saved, device="cpu")
    x = e.sample(40, seed=0)
    idx = e.encode(x)
    assert [a.shape for a in idx] == [(40, s) for s in e.cfg.scales]
    assert all(a.dtype == np.int64 for a in idx)
    # encode = the quantizer's eager multi-scale lookup on the latent, in float64
    vq = e.model.vqvae
    xm = torch.tensor(e.scaler.to_unit(x.astype(np.float64)) * 2 - 1, dtype=torch.float32)
    with torch.no_grad():
        f = vq.latent(xm).double()
        cb = vq.quant.codebook.weight.double()
        for k, s in enumerate(e.cfg.scales):
            r = torch.nn.functional.adaptive_avg_pool1d(f, s).transpose(1, 2)
            d = ((r[..., None, :] - cb) ** 2).sum(-1)
            want = d.argmin(-1)
            got = torch.as_tensor(idx[k])
            close = (d.gather(-1, got[..., None]) - d.min(-1, keepdim=True).values).abs() < 1e-5
            assert close.all()
            assert (got == want).float().mean() > 0.99
            f = f - vq.quant.embed(got, k).double()
    # decode inverts into windows the VQ-VAE would reconstruct
    y = e.decode(idx)
    with torch.no_grad():
        recon = vq(xm).x_hat.clamp(-1, 1).numpy()
    np.testing.assert_allclose(e.scaler.to_unit(y.astype(np.float64)) * 2 - 1, recon, atol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        e.encode(x[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        e.encode(np.full_like(x, np.nan))
    with pytest.raises(ValueError, match="outside"):
        e.decode([a + 1000 for a in idx])
    with pytest.raises(ValueError, match="token maps"):
        e.decode(idx[:-1])


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["auto", "int8"])
def test_engine_and_eager_samples_are_indistinguishable(precision):
    """Discriminative score (protocol GRU classifier, shortened) of engine vs eager samples of
    the default model stays at the level of two independent eager draws: as `auto` runs it (fp32
    for this model on CPU) and with int8 linear layers."""
    from timemar_engine import extension
    from timemar_engine.metrics import discriminative_score

    if precision == "int8" and extension.load() is None:
        pytest.skip(f"int8 needs the C++ extension: {extension.unavailable_reason()}")
    eager = Engine.load(device="cpu", backend="eager")
    engine = Engine.load(device="cpu", backend="engine", precision=precision)
    n, its = 3000, 600
    a = eager.sample(n, seed=1, scale="unit")
    b = eager.sample(n, seed=2, scale="unit")
    c = engine.sample(n, seed=3, scale="unit")
    two_eager = discriminative_score(a, b, seed=0, iterations=its)
    engine_vs_eager = discriminative_score(a, c, seed=0, iterations=its)
    print(f"discriminative: eager vs eager {two_eager:.4f}, engine ({engine.precision}) vs eager "
          f"{engine_vs_eager:.4f}")
    assert engine_vs_eager <= two_eager + 0.04
    assert engine_vs_eager < 0.08


def test_engine_through_the_triton_attention_kernel(model):
    """The engine's strided KV-cache views go through the Triton kernel (the interpreter on CPU)
    and give the tokens and windows of the bmm path."""
    pytest.importorskip("triton", reason="triton is not installed")
    from timemar_engine.kernels.attention import cached_attention

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(dev)
    bmm, triton_path = FastSampler(model, dev), FastSampler(model, dev)
    bmm.attention, triton_path.attention = backends.bmm_cached_attention, cached_attention
    xa, ia = bmm.generate(6, torch.Generator(dev).manual_seed(4), return_indices=True)
    xb, ib = triton_path.generate(6, torch.Generator(dev).manual_seed(4), return_indices=True)
    same = torch.cat(ia, 1) == torch.cat(ib, 1)
    assert same.float().mean() > 0.97  # only uniforms on a cdf boundary may flip
    if same.all():
        torch.testing.assert_close(xa, xb, atol=1e-4, rtol=0)


def test_streams_give_the_same_windows_as_one(model):
    """Batches on several one-thread streams equal the same batches in sequence."""
    from timemar_engine.fast_sampling import StreamSampler

    threads = torch.get_num_threads()
    cpu, sizes = torch.device("cpu"), [7, 7, 7, 7, 3]
    one = torch.cat(list(StreamSampler(model, cpu, 1).iter_generate(
        sizes, torch.Generator().manual_seed(5), top_k=30)))
    many = torch.cat(list(StreamSampler(model, cpu, 3).iter_generate(
        sizes, torch.Generator().manual_seed(5), top_k=30)))
    assert one.shape == (31, 24, 3) and torch.equal(one, many)
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="top_k"):
        next(StreamSampler(model, cpu, 2).iter_generate([4], None, top_k=0))


def test_cpu_streams_setting(monkeypatch):
    monkeypatch.setenv("TIMEMAR_CPU_STREAMS", "3")
    assert backends.cpu_streams() == 3
    monkeypatch.setenv("TIMEMAR_CPU_STREAMS", "zero")
    with pytest.raises(ValueError, match="TIMEMAR_CPU_STREAMS"):
        backends.cpu_streams()


def test_bmm_cached_attention_matches_float64():
    g = torch.Generator().manual_seed(9)
    q = torch.randn(3, 2, 5, 24, generator=g)
    k, v = torch.randn(2, 3, 2, 40, 24, generator=g)
    k[:, :, 17:], v[:, :, 17:] = float("nan"), 1e4  # beyond kv_len: never read
    out = torch.full((3, 5, 2, 24), float("nan")).transpose(1, 2)  # the engine's strided target
    backends.bmm_cached_attention(q, k, v, 17, out=out)
    q64, k64, v64 = q.double(), k[:, :, :17].double(), v[:, :, :17].double()
    want = torch.softmax(q64 @ k64.transpose(-1, -2) / 24 ** 0.5, -1) @ v64
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=0)
