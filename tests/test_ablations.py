"""The design's ablation switches: decomposition=False (one path) and guidance=False."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from timemar_engine.config import ModelConfig
from timemar_engine.engine import Engine
from timemar_engine.model import TimeMAR
from timemar_engine.vqvae import amplitude

SINGLE = dict(decomposition=False, guidance=False)


def randomised(model: TimeMAR) -> TimeMAR:
    """Every parameter redrawn (norms' affine too), so no layer is its init's identity."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return model.eval()


def test_config_switches():
    assert ModelConfig().decomposition and ModelConfig().guidance
    with pytest.raises(ValueError, match="guidance .* needs decomposition"):
        tiny_config(decomposition=False)
    with pytest.raises(ValueError, match="decomposition must be true or false"):
        tiny_config(decomposition="no")
    d = tiny_config().to_dict()  # a checkpoint from before the switches: both on
    del d["decomposition"], d["guidance"]
    assert ModelConfig.from_dict(d) == tiny_config()
    assert ModelConfig.from_dict(tiny_config(**SINGLE).to_dict()) == tiny_config(**SINGLE)


def test_single_path_is_one_conv_path():
    full = TimeMAR(tiny_config()).parameter_counts()
    model = randomised(TimeMAR(tiny_config(**SINGLE)))  # float32: the code lookup's dtype
    vq = model.vqvae
    counts = model.parameter_counts()
    assert counts["decomposition"] == counts["fine_encoder"] == 0
    assert counts["decoder"] < full["decoder"] and counts["fusion"] < full["fusion"]
    assert counts["transformer"] == full["transformer"]
    x = torch.rand(5, 24, 3) * 2 - 1
    out = vq(x)
    # independent wiring: encoder convs -> 1x1 fusion -> quantizer -> decoder trunk -> one head
    xc = x.transpose(1, 2)
    f_hat = vq.quant.decode_indices(vq.quant.encode(vq.fuse(vq.coarse_enc(xc))))
    d = vq.decoder
    want = d.trend_out(d.coarse(d.coarse_in(f_hat)))
    torch.testing.assert_close(out.x_hat, want.transpose(1, 2), rtol=1e-5, atol=1e-6)
    trend, coarse, fine = d(f_hat)
    assert not coarse.any() and not fine.any() and trend.std() > 0
    assert "components" not in out.terms
    loss = (F.mse_loss(want, xc) + vq.cfg.w_fft * F.l1_loss(amplitude(want), amplitude(xc))
            + out.terms["vq"])
    torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=0)


@pytest.mark.parametrize("guidance", [True, False])
def test_guidance_switch_cuts_the_prior(guidance):
    """The fine component responds to the coarse head's weights only through the guidance."""
    model = randomised(TimeMAR(tiny_config(guidance=guidance)).double())
    d = model.vqvae.decoder
    assert hasattr(d, "guide") == guidance and hasattr(d, "prior_embed") == guidance
    f_hat = torch.randn(4, 8, 12, dtype=torch.float64)
    with torch.no_grad():
        _, coarse0, fine0 = d(f_hat)
        d.coarse_out.weight.add_(0.5)
        _, coarse1, fine1 = d(f_hat)
    assert (coarse1 - coarse0).abs().max() > 1e-3
    assert ((fine1 - fine0).abs().max() > 1e-6) == guidance
    if guidance:
        return
    want = d.fine_out(d.fine(d.fine_in(f_hat)))
    torch.testing.assert_close(fine1, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("switches", [dict(guidance=False), SINGLE], ids=["no-guidance", "single"])
def test_ablated_models_train_save_and_sample(switches, tmp_path, rng):
    """A few stage-1 and stage-2 steps, then both backends sample and decode the same windows."""
    from timemar_engine.train_api import train

    t = np.arange(3000)
    series = np.stack([np.sin(t / 7), np.cos(t / 11), rng.normal(size=3000).cumsum() / 30], 1)
    np.save(tmp_path / "series.npy", series)
    overrides = {**{k: v for k, v in tiny_config().to_dict().items()
                    if k in ("hidden", "enc_blocks", "code_dim", "codebook_size", "d_model",
                             "n_layer", "n_head", "attn_heads")}, **switches}
    ckpt = tmp_path / "m.pt"
    train(str(tmp_path / "series.npy"), out=ckpt, preset="xs", overrides=overrides, steps1=20,
          steps2=20, batch_size=16, device="cpu", progress=False)
    eager = Engine.load(ckpt, device="cpu", backend="eager")
    fast = Engine.load(ckpt, device="cpu", backend="engine")
    for k, v in switches.items():
        assert getattr(eager.cfg, k) is v
    x = eager.sample(64, seed=3)
    assert x.shape == (64, 24, 3) and np.isfinite(x).all() and x.std(0).mean() > 0
    tokens = eager.encode(x)
    np.testing.assert_allclose(fast.decode(tokens), eager.decode(tokens), rtol=1e-5, atol=1e-5)
    y = fast.sample(64, seed=3)
    assert y.shape == x.shape and np.isfinite(y).all()
