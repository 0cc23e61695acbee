"""The channels-last Conv2d decoder (fast_decoder.py) against the model's Conv1d decoder."""
import pytest
import torch

from conftest import tiny_config
from timemar_engine.config import preset
from timemar_engine.fast_decoder import ChannelsLastDecoder, decode_sum
from timemar_engine.model import TimeMAR


def random_decoder(cfg, dtype):
    """A model with every decoder parameter drawn at random (GroupNorm / LayerNorm affine too, so
    no weight is the identity its init would make it)."""
    model = TimeMAR(cfg).to(dtype).eval()
    gen = torch.Generator().manual_seed(cfg.seq_len + cfg.hidden)
    with torch.no_grad():
        for p in model.vqvae.decoder.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * 0.3)
    return model


@pytest.mark.parametrize("cfg", [tiny_config(), tiny_config(seq_len=64), preset("xs", 24, 5),
                                 preset("s", 24, 6), tiny_config(guidance=False),
                                 tiny_config(decomposition=False, guidance=False)],
                         ids=["tiny", "tiny-T64", "xs", "s", "no-guidance", "single-path"])
@pytest.mark.parametrize("batch", [1, 37])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_matches_the_conv1d_decoder(cfg, batch, dtype, tol):
    model = random_decoder(cfg, dtype)
    q = model.vqvae.quant
    f_hat = torch.randn(batch, q.dim, q.latent_len, dtype=dtype,
                        generator=torch.Generator().manual_seed(batch))
    fast = ChannelsLastDecoder(model.vqvae.decoder)
    with torch.no_grad():
        want = model.vqvae.decoder(f_hat)
        got = fast(f_hat)
        for w, g in zip(want, got):
            assert g.shape == w.shape == (batch, cfg.channels, cfg.seq_len)
            assert g.transpose(1, 2).is_contiguous()  # (B, T, C) memory
            scale = w.abs().max().item()
            torch.testing.assert_close(g, w, atol=tol * max(1.0, scale), rtol=tol)
        clamped = decode_sum(fast, f_hat)
        torch.testing.assert_close(clamped, model.vqvae.decode(f_hat).clamp(-1, 1),
                                   atol=tol * 10, rtol=tol)
        assert clamped.is_contiguous() and clamped.abs().max() <= 1


def test_is_a_copy_of_the_weights_at_conversion():
    """Converting does not touch the model; later changes to the model do not leak in."""
    model = random_decoder(tiny_config(), torch.float32)
    before = {k: v.clone() for k, v in model.vqvae.decoder.state_dict().items()}
    fast = ChannelsLastDecoder(model.vqvae.decoder)
    for k, v in model.vqvae.decoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    f_hat = torch.randn(3, model.vqvae.quant.dim, model.vqvae.quant.latent_len)
    with torch.no_grad():
        out = fast(f_hat)[2].clone()
        model.vqvae.decoder.fine_out[1].bias.add_(1.0)
        assert torch.equal(fast(f_hat)[2], out)
    assert not any(isinstance(m, torch.nn.Conv1d) for m in fast.modules())
    assert not any(p.requires_grad for p in fast.parameters())
    # the in-place activations are the copy's own: the model's decoder still computes out of place
    silu = [m for m in fast.modules() if isinstance(m, torch.nn.SiLU)]
    assert silu and all(m.inplace for m in silu)
    assert not any(m.inplace for m in model.vqvae.decoder.modules()
                   if isinstance(m, torch.nn.SiLU))
    x = torch.randn(2, 16, 24)
    blk = model.vqvae.decoder.fine_out[0]
    with torch.no_grad():
        x0 = x.clone()
        blk(x)
    assert torch.equal(x, x0)
