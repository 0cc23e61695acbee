import numpy as np
import pytest
import torch

from conftest import tiny_config
from timemar_engine.config import ModelConfig, default_scales, preset
from timemar_engine.data import load_dataset, prepare
from timemar_engine.decompose import Decomposition
from timemar_engine.gpt import block_causal_mask
from timemar_engine.model import TimeMAR
from timemar_engine.quantizer import nearest_code
from timemar_engine.sampling import filter_logits, generate
from timemar_engine.stage_data import tokenize, to_model_scale


@pytest.mark.parametrize("T", [24, 64, 37])
def test_decomposition_sums_back(T):
    dec = Decomposition(T, (3, 5, 9), 4).double()
    with torch.no_grad():
        dec.mix.normal_()
    x = torch.randn(5, 3, T, dtype=torch.float64) * 3 + 1
    trend, coarse, fine = dec(x)
    torch.testing.assert_close(trend + coarse + fine, x, atol=1e-12, rtol=0)
    assert trend.std() > 0 and coarse.std() > 0 and fine.std() > 0
    # the trend of a linear ramp is the ramp itself away from the edges
    ramp = torch.linspace(0, 1, T, dtype=torch.float64).expand(1, 1, T)
    h = max(dec.kernels) // 2
    torch.testing.assert_close(dec(ramp)[0][..., h:-h], ramp[..., h:-h])


def test_quantizer_fhat_is_sum_of_scales():
    m = TimeMAR(tiny_config()).eval()
    q = m.vqvae.quant
    f = torch.randn(6, q.dim, q.latent_len)
    f_hat, indices, _ = q(f)
    assert [i.shape[1] for i in indices] == list(q.scales)
    parts = [q.embed(idx, k) for k, idx in enumerate(indices)]
    torch.testing.assert_close(f_hat, sum(parts), atol=1e-5, rtol=1e-5)
    enc = q.encode(f)
    for a, b in zip(enc, indices):
        assert torch.equal(a, b)
    # the residual is shrinking: the reconstruction is closer to f than zero is
    assert (f_hat - f).pow(2).mean() < f.pow(2).mean()


def test_nearest_code_matches_float64_reference(rng):
    r = torch.from_numpy(rng.normal(size=(300, 16))).float()
    cb = torch.from_numpy(rng.normal(size=(100, 16))).float()
    ref = torch.cdist(r.double(), cb.double()).argmin(1)
    assert torch.equal(nearest_code(r, cb, cosine=False), ref)
    cos = (torch.nn.functional.normalize(r.double(), dim=1)
           @ torch.nn.functional.normalize(cb.double(), dim=1).T).argmax(1)
    assert torch.equal(nearest_code(r, cb, cosine=True), cos)


def test_block_causal_mask_structure():
    m = block_causal_mask((1, 2, 3))
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [1, 1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)


def test_changing_scale_k_never_changes_earlier_logits():
    cfg = tiny_config()
    gpt = TimeMAR(cfg).gpt.eval().double()
    L, first = cfg.n_tokens, cfg.scales[0]
    inputs = torch.randn(2, L - first, cfg.code_dim, dtype=torch.float64)
    base = gpt(inputs)
    off = gpt.offsets
    for k in range(1, len(cfg.scales)):
        changed = inputs.clone()
        pos = off[k] + (cfg.scales[k] - 1) // 2 - first  # a token inside scale k
        changed[:, pos] += torch.randn(cfg.code_dim, dtype=torch.float64)
        out = gpt(changed)
        torch.testing.assert_close(out[:, :off[k]], base[:, :off[k]], atol=0, rtol=0)
        # every token of scale k (and later) sees the change
        diff = (out - base).abs().amax(-1)
        assert (diff[:, off[k]:off[k + 1]] > 1e-9).all()


def test_kv_cached_steps_equal_full_forward():
    cfg = tiny_config()
    m = TimeMAR(cfg).eval().double()
    gpt, q = m.gpt, m.vqvae.quant
    B = 3
    idx = [torch.randint(cfg.codebook_size, (B, s)) for s in cfg.scales]
    full = gpt(q.teacher_inputs(idx))
    inputs = q.teacher_inputs(idx)
    gpt.setup_cache(B)
    first = cfg.scales[0]
    for k in range(len(cfg.scales)):
        lo, hi = gpt.offsets[k], gpt.offsets[k + 1]
        step_in = None if k == 0 else inputs[:, lo - first:hi - first]
        torch.testing.assert_close(gpt.step(step_in, k, B), full[:, lo:hi], atol=1e-10, rtol=0)
    gpt.setup_cache(None)


def test_sampler_inputs_match_teacher_forcing():
    """The sampler's next-scale inputs are exactly the teacher-forced ones for its tokens."""
    cfg = tiny_config()
    m = TimeMAR(cfg).eval()
    seen, step = [], m.gpt.step

    def recording_step(inputs, k, batch):
        if inputs is not None:
            seen.append(inputs.clone())
        return step(inputs, k, batch)

    m.gpt.step = recording_step
    x, idx = generate(m, 4, torch.Generator().manual_seed(3), return_indices=True)
    assert x.shape == (4, 24, 3) and x.abs().max() <= 1
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(seen, 1), m.vqvae.quant.teacher_inputs(idx))
        f_hat = m.vqvae.quant.decode_indices(idx)
        torch.testing.assert_close(x, m.vqvae.decode(f_hat).clamp(-1, 1))


def test_filter_logits_top_k_top_p_against_reference(rng):
    logits = torch.from_numpy(rng.normal(size=(4, 5, 50))).float()
    k = filter_logits(logits, top_k=7)
    assert torch.equal(torch.isfinite(k).sum(-1), torch.full((4, 5), 7))
    kept = torch.isfinite(k)
    assert torch.equal(kept, logits >= logits.topk(7, -1).values[..., -1:])
    p = filter_logits(logits, top_p=0.6)
    probs = logits.double().softmax(-1).numpy()
    for row, keep in zip(probs.reshape(-1, 50), torch.isfinite(p).reshape(-1, 50).numpy()):
        order = np.argsort(-row)
        n_keep = int(np.searchsorted(np.cumsum(row[order]), 0.6) + 1)
        assert set(np.flatnonzero(keep)) == set(order[:n_keep])
    t = filter_logits(logits, temperature=0.5)
    torch.testing.assert_close(t, (logits - logits.amax(-1, keepdim=True)) * 2)
    with pytest.raises(ValueError, match="temperature"):
        filter_logits(logits, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(logits, top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        filter_logits(logits, top_k=0)


def test_top_k_one_is_greedy():
    cfg = tiny_config()
    m = TimeMAR(cfg).eval()
    a = generate(m, 3, torch.Generator().manual_seed(1), top_k=1)
    b = generate(m, 3, torch.Generator().manual_seed(2), top_k=1)
    torch.testing.assert_close(a, b)


def test_config_round_trip_presets_and_errors():
    cfg = tiny_config(scales=(1, 3, 6, 12))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert default_scales(24) == (1, 2, 3, 4, 6, 8, 12)
    assert default_scales(64)[-1] == 16 and default_scales(256)[-1] == 64
    counts = TimeMAR(preset("s", 24, 28)).parameter_counts()
    assert counts["total"] < 6_000_000
    with pytest.raises(ValueError, match="power of two"):
        ModelConfig(seq_len=24, channels=2, scales=(1, 5))
    with pytest.raises(ValueError, match="increasing"):
        ModelConfig(seq_len=24, channels=2, scales=(2, 2, 12))
    with pytest.raises(ValueError, match="unknown config"):
        ModelConfig.from_dict({"seq_len": 24, "bogus": 1})
    with pytest.raises(ValueError, match="unknown preset"):
        preset("xxl", 24, 2)


@pytest.mark.parametrize("T", [64])
def test_long_windows_shapes(T):
    cfg = tiny_config(seq_len=T)
    m = TimeMAR(cfg).eval()
    x = torch.rand(2, T, 3) * 2 - 1
    assert m.vqvae(x).x_hat.shape == (2, T, 3)
    assert generate(m, 2, torch.Generator().manual_seed(0)).shape == (2, T, 3)


def test_stage1_training_reduces_reconstruction_error_on_real_data(datasets_dir):
    from timemar_engine.config import TrainConfig
    from timemar_engine.stage_data import stage1_report
    from timemar_engine.training import Trainer

    from timemar_engine.data import WindowSet

    w, sc = prepare(load_dataset("stocks", datasets_dir), 24)
    cfg = tiny_config(channels=6)
    model = TimeMAR(cfg)
    data = to_model_scale(w)
    before = stage1_report(model, WindowSet(w, 24), "cpu")["recon_mse"]
    tr = Trainer(model, w, sc, [f"c{i}" for i in range(6)],
                 TrainConfig(batch_size=64, stage1_steps=150, warmup=20), "/dev/null", "cpu",
                 progress=False)
    tr.save = lambda *a, **k: None
    tr.stage1(None, None)
    after = tr.meta["stage1"]["recon_mse"]
    assert after < 0.2 * before, (before, after)
    assert len(tr.meta["stage1"]["perplexity"]) == len(cfg.scales)
    tokens = tokenize(model, data[:10], "cpu")
    assert tokens.shape == (10, cfg.n_tokens) and tokens.max() < cfg.codebook_size


def test_step_budget_fits_the_time_and_schedule(monkeypatch):
    from timemar_engine import schedule

    clock = [0.0]
    monkeypatch.setattr(schedule.time, "perf_counter", lambda: clock[0])
    b = schedule.StepBudget(1000, warmup=10, seconds=100.0)
    assert b.lr_factor(0) == pytest.approx(0.1) and b.lr_factor(9) == pytest.approx(1.0)
    for step in range(1, 21):
        clock[0] += 0.5  # 0.5 s per step: 200 steps fit in 100 s
        b.observe(step, 0)
    assert b.total == 200
    for step in range(21, 201):
        clock[0] += 0.25  # faster now: the total grows back towards the request
        b.observe(step, 0)
    assert 200 < b.total <= 1000
    assert b.lr_factor(b.total) == pytest.approx(0.1)
    assert not b.out_of_time()
    clock[0] = 100.5
    assert b.out_of_time()


def test_dead_codes_are_restarted_on_recent_residuals():
    m = TimeMAR(tiny_config(codebook_size=64))
    q = m.vqvae.quant.train()
    f = torch.randn(8, q.dim, q.latent_len) * 3 + 5  # far from the initial codebook
    q(f)
    used = q.usage > 0
    assert 0 < used.sum() < 64
    before = q.codebook.weight.detach().clone()
    n = q.restart_dead_codes()
    after = q.codebook.weight.detach()
    assert n == int((~used).sum())
    assert torch.equal(after[used], before[used])
    # every restarted code now sits next to one of the residual vectors seen in that forward
    d = torch.cdist(after[~used], q.recent_residuals).min(1).values
    assert (d < 0.2 * q.recent_residuals.std() * q.dim ** 0.5).all()
    assert (q.usage == 0).all()
