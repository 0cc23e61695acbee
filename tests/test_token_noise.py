"""Self-correcting teacher forcing (`TrainConfig.token_noise`): the corrupted token maps against a
float64 re-quantization written out here, and stage 2 trained with it."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from timemar_engine import TrainConfig, train
from timemar_engine.model import TimeMAR

from conftest import tiny_config


def reference_encode(quant, f: torch.Tensor, drawn: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each scale's nearest codes (float64, by explicit distances) for the residual that the
    given corrupted maps of the earlier scales leave."""
    book = quant.codebook.weight.double()
    rest, out = f.double(), []
    for k, s in enumerate(quant.scales):
        r = F.adaptive_avg_pool1d(rest, s).transpose(1, 2)  # (B, s, Cz)
        out.append(((r[..., None, :] - book) ** 2).sum(-1).argmin(-1))
        rest = rest - quant.embed(drawn[k], k).double()
    return out


@pytest.mark.parametrize("p", [0.0, 0.25, 0.6])
def test_targets_quantize_what_the_corrupted_scales_leave(p):
    torch.manual_seed(3)
    quant = TimeMAR(tiny_config(codebook_size=48)).vqvae.quant
    f = torch.randn(64, quant.dim, quant.latent_len) * 0.5
    targets, drawn = quant.encode_corrupted(f, p)
    assert [t.shape for t in targets] == [(64, s) for s in quant.scales]
    ref = reference_encode(quant, f, drawn)
    agree = torch.cat([(t == r).flatten() for t, r in zip(targets, ref)]).float().mean()
    assert agree > 0.995  # float32 vs float64 may split a near tie
    flipped = torch.cat([(t != d).flatten() for t, d in zip(targets, drawn)]).float().mean()
    # a drawn code equals the nearest one with chance 1/V
    assert abs(float(flipped) - p * (1 - 1 / quant.size)) < 0.05
    if p == 0.0:
        assert all(torch.equal(t, e) for t, e in zip(targets, quant.encode(f)))


def test_later_targets_correct_the_corruption():
    """With corrupted earlier scales the later targets differ from the clean encoding: they
    point back towards f, so the decoded sum of (corrupted earlier + corrected later) maps
    beats the corrupted maps with the clean later codes."""
    torch.manual_seed(4)
    quant = TimeMAR(tiny_config(codebook_size=48)).vqvae.quant
    with torch.no_grad():  # a codebook spread like the latents, so the nearest code matters
        quant.codebook.weight.normal_(0, 0.5)
        f = torch.randn(256, quant.dim, quant.latent_len) * 0.5
        targets, drawn = quant.encode_corrupted(f, 0.3)
        clean = quant.encode(f)
        K = len(quant.scales)
        corrected = quant.decode_indices(drawn[:-1] + [targets[-1]])
        naive = quant.decode_indices(drawn[:-1] + [clean[-1]])
    assert not all(torch.equal(t, c) for t, c in zip(targets[1:], clean[1:]))
    assert K > 2 and ((corrected - f) ** 2).mean() < ((naive - f) ** 2).mean()


def test_token_noise_is_checked():
    with pytest.raises(ValueError, match="token_noise must be in \\[0, 1\\]"):
        TrainConfig(token_noise=1.5)
    assert TrainConfig(token_noise=0.2).token_noise == 0.2


def test_stage2_trains_with_token_noise_and_resumes_exactly(tmp_path, rng):
    series = np.cumsum(rng.normal(size=(300, 2)), axis=0)
    kw = dict(preset="xs", overrides={"hidden": 16, "code_dim": 8, "codebook_size": 32,
                                      "d_model": 32, "n_layer": 1, "n_head": 2, "attn_heads": 2},
              steps1=30, steps2=24, batch_size=16, seed=2, progress=False, device="cpu")
    noisy = train(series, out=tmp_path / "noisy.pt", token_noise=0.3, **kw)
    plain = train(series, out=tmp_path / "plain.pt", **kw)
    assert noisy.meta["train_config"]["token_noise"] == 0.3
    s_noisy, s_plain = noisy.model.gpt.state_dict(), plain.model.gpt.state_dict()
    assert any(not torch.equal(s_noisy[k], s_plain[k]) for k in s_noisy)  # the noise acts
    ce = noisy.meta["stage2"]["ce_mean_token"]
    assert np.isfinite(ce) and ce < np.log(32)  # learned something (uniform is log V)

    stops = []
    train(series, out=tmp_path / "cut.pt", token_noise=0.3,
          on_step=lambda stage, step, logs: stage == 2 and step == 10 and not stops.append(step),
          **kw)
    resumed = train(series, out=tmp_path / "cut.pt", resume=tmp_path / "cut.pt", progress=False,
                    device="cpu")
    s_res = resumed.model.gpt.state_dict()
    assert stops == [10] and all(torch.equal(s_res[k], s_noisy[k]) for k in s_noisy)
