"""The 'one scale' ablation (multiscale=False): one token map of the latent length, predicted
token by token in raster order by the same transformer under a causal mask."""
import numpy as np
import pytest
import torch

from conftest import tiny_config, train_tiny
from timemar_engine import backends
from timemar_engine.config import ModelConfig
from timemar_engine.engine import Engine
from timemar_engine.fast_sampling import FastSampler
from timemar_engine.model import TimeMAR
from timemar_engine.sampling import generate
from timemar_engine.stage_data import per_scale_ce, split_scales


def one_map_model(seed: int = 0, **kw) -> TimeMAR:
    torch.manual_seed(seed)
    model = TimeMAR(tiny_config(multiscale=False, **kw))
    with torch.no_grad():  # away from init, so the transformer's outputs depend on its inputs
        for p in model.gpt.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def test_config():
    cfg = tiny_config(multiscale=False)
    assert ModelConfig().multiscale and tiny_config().scales[-1] == 12
    assert cfg.scales == (12,) and cfg.blocks == (1,) * 12 and cfg.n_tokens == 12
    assert tiny_config(seq_len=64, multiscale=False).scales == (16,)
    assert tiny_config().blocks == tiny_config().scales
    with pytest.raises(ValueError, match="one entry"):
        tiny_config(multiscale=False, scales=(6, 12))
    with pytest.raises(ValueError, match="one map is multiscale=false"):
        tiny_config(scales=(12,))
    with pytest.raises(ValueError, match="multiscale must be true or false"):
        tiny_config(multiscale=0)
    d = tiny_config().to_dict()  # a checkpoint from before the switch: next-scale
    del d["multiscale"]
    assert ModelConfig.from_dict(d) == tiny_config()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_mask_is_causal_and_inputs_are_previous_codes():
    model = one_map_model()
    gpt, quant = model.gpt, model.vqvae.quant
    L = 12
    assert torch.equal(gpt.mask, torch.tril(torch.ones(L, L, dtype=torch.bool)))
    idx = torch.randint(32, (5, L))
    inputs = quant.teacher_inputs([idx])
    torch.testing.assert_close(inputs, quant.codebook.weight[idx[:, :-1]])
    # logits at position t do not move when tokens t.. change, and do when token t - 1 does
    t = 5
    later = idx.clone()
    later[:, t:] = (later[:, t:] + 7) % 32
    earlier = idx.clone()
    earlier[:, t - 1] = (earlier[:, t - 1] + 7) % 32
    with torch.no_grad():
        base = gpt(quant.teacher_inputs([idx]))
        moved_later = gpt(quant.teacher_inputs([later]))
        moved_earlier = gpt(quant.teacher_inputs([earlier]))
    torch.testing.assert_close(moved_later[:, :t + 1], base[:, :t + 1], rtol=0, atol=1e-6)
    assert (moved_earlier[:, t] - base[:, t]).abs().max() > 1e-3


def test_cached_sampling_matches_uncached_greedy_decoding():
    """Greedy (tiny temperature) generate, step by step through the KV cache, against greedy
    decoding with the teacher-forced forward over the whole map (no cache)."""
    model = one_map_model(seed=1)
    gpt, quant, B, L = model.gpt, model.vqvae.quant, 6, 12
    x, (idx,) = generate(model, B, torch.Generator().manual_seed(0), temperature=1e-30,
                         return_indices=True)
    assert idx.shape == (B, L) and x.shape == (B, 24, 3)
    want = torch.zeros(B, L, dtype=torch.long)
    with torch.no_grad():
        for t in range(L):
            want[:, t] = gpt(quant.teacher_inputs([want]))[:, t].argmax(-1)
        ref = model.vqvae.decode(quant.embed(want, 0)).clamp(-1, 1)
    assert torch.equal(idx, want) and want.unique().numel() > 1
    torch.testing.assert_close(x, ref)


def test_sampled_first_token_follows_the_start_logits():
    model = one_map_model(seed=2)
    with torch.no_grad():
        p = model.gpt(model.vqvae.quant.teacher_inputs([torch.zeros(1, 12, dtype=torch.long)]))
    p = p[0, 0].double().softmax(-1)
    _, (idx,) = generate(model, 20000, torch.Generator().manual_seed(3), return_indices=True)
    freq = torch.bincount(idx[:, 0], minlength=32).double() / len(idx)
    assert (freq - p).abs().max() < 4 * (p * (1 - p) / len(idx)).sqrt().max() + 1e-3


def test_stage2_loss_is_the_token_cross_entropy():
    model = one_map_model(seed=4)
    quant, idx = model.vqvae.quant, torch.randint(32, (7, 12))
    logits = model.gpt(quant.teacher_inputs(split_scales(idx, model.cfg.scales)))
    ce = per_scale_ce(logits, idx, model.cfg.scales)
    want = -logits.double().log_softmax(-1).gather(-1, idx[..., None]).mean()
    assert ce.shape == (1,)
    torch.testing.assert_close(ce[0].double(), want, rtol=1e-6, atol=0)


def test_engine_refuses_and_auto_picks_eager(tmp_path, rng):
    ckpt = train_tiny(tmp_path, rng, multiscale=False)
    engine = Engine.load(ckpt, device="cpu")
    assert engine.backend == "eager" and not engine.cfg.multiscale
    assert engine.info()["backends_available"] == ["eager"]
    x = engine.sample(32, seed=5)
    assert x.shape == (32, 24, 3) and np.isfinite(x).all() and x.std(0).mean() > 0
    np.testing.assert_array_equal(x, engine.sample(32, seed=5))
    tokens = engine.encode(x)
    assert [t.shape for t in tokens] == [(32, 12)]
    assert engine.decode(tokens).shape == x.shape
    with pytest.raises(ValueError, match="token by token on the eager backend"):
        Engine.load(ckpt, device="cpu", backend="engine")
    with pytest.raises(ValueError, match="token by token"):
        FastSampler(engine.model, torch.device("cpu"))
    assert backends.resolve_backend("auto", torch.device("cpu")) == "engine"
