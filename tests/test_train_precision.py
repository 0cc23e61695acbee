"""Stage 2 in bf16 autocast: chosen by the hardware, close to a float64 reference, recorded in the
checkpoint, kept on resume and refused as a mid-stage change."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from timemar_engine import TrainConfig, backends, train
from timemar_engine.cli import main as cli_main
from timemar_engine.gpt import ScaleGPT
from timemar_engine.stage_data import per_scale_ce

from conftest import tiny_config

TINY = {"hidden": 16, "code_dim": 8, "codebook_size": 64, "d_model": 32, "n_layer": 1,
        "n_head": 2, "attn_heads": 2}
STEPS = {"steps1": 40, "steps2": 20, "batch_size": 16, "seed": 5}


@pytest.fixture
def walk(rng):
    return np.cumsum(rng.normal(size=(200, 2)), axis=0)


def run(data, out, **kw):
    return train(data, out=out, preset="xs", overrides=TINY, progress=False, device="cpu",
                 **{**STEPS, **kw})


def state_dicts(path: Path) -> dict:
    obj = torch.load(path, weights_only=True)
    return {f"{part}.{k}": v for part in ("vqvae", "gpt") for k, v in obj[part].items()}


def test_auto_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: True)
    assert backends.resolve_train_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: False)
    assert backends.resolve_train_precision("auto", cpu) == "fp32"
    assert backends.resolve_train_precision("bf16", cpu) == "bf16"  # asked for: emulated, slow
    assert backends.resolve_train_precision("fp32", cpu) == "fp32"
    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert backends.resolve_train_precision("auto", torch.device("cuda", 0)) == expected
    with pytest.raises(ValueError, match="fp16.*auto, fp32, bf16"):
        backends.resolve_train_precision("fp16", cpu)


def test_native_bf16_probe_agrees_with_the_kernel_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to compare with (not Linux)")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("flags")), None)
    if flags is None:
        pytest.skip("/proc/cpuinfo lists no CPU flags")
    assert backends.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_tile" in flags)


def test_bf16_stage2_step_matches_a_float64_reference():
    """Loss and gradients of one stage-2 step under the training autocast against the same
    transformer in float64; the autocast path really multiplies in bf16."""
    cfg = tiny_config(codebook_size=64, d_model=64, n_layer=2, n_head=2)
    gpt = ScaleGPT(cfg)
    ref = copy.deepcopy(gpt).double()
    g = torch.Generator().manual_seed(7)
    inputs = torch.randn(8, cfg.n_tokens - cfg.scales[0], cfg.code_dim, generator=g)
    targets = torch.randint(0, cfg.codebook_size, (8, cfg.n_tokens), generator=g)

    head_dtypes = []
    gpt.head.register_forward_hook(lambda m, i, out: head_dtypes.append(out.dtype))
    with backends.train_autocast("bf16", torch.device("cpu")):
        logits = gpt(inputs)
    assert head_dtypes == [torch.bfloat16] and logits.dtype == torch.float32
    ce = per_scale_ce(logits, targets, cfg.scales)
    ce.sum().backward()
    ce_ref = per_scale_ce(ref(inputs.double()).double(), targets, cfg.scales)
    ce_ref.sum().backward()
    torch.testing.assert_close(ce.double(), ce_ref, rtol=2e-2, atol=0)
    for (name, p), p_ref in zip(gpt.named_parameters(), ref.parameters()):
        assert p.grad.dtype == torch.float32, name
        cos = torch.nn.functional.cosine_similarity(p.grad.double().flatten(),
                                                    p_ref.grad.flatten(), dim=0)
        assert cos > 0.99, (name, float(cos))

    with backends.train_autocast("fp32", torch.device("cpu")):
        assert gpt(inputs).dtype == torch.float32 and head_dtypes[-1] == torch.float32
        torch.testing.assert_close(per_scale_ce(gpt(inputs), targets, cfg.scales).double(),
                                   ce_ref, rtol=1e-5, atol=0)


def test_precision_is_recorded_and_only_changes_stage_two(walk, tmp_path):
    b16, f32 = run(walk, tmp_path / "b.pt", precision="bf16"), run(walk, tmp_path / "f.pt",
                                                                      precision="fp32")
    assert b16.meta["stage2"]["precision"] == "bf16" and f32.meta["stage2"]["precision"] == "fp32"
    assert b16.meta["train_config"]["precision"] == "bf16"
    a, b = state_dicts(tmp_path / "b.pt"), state_dicts(tmp_path / "f.pt")
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("vqvae."))
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("gpt."))
    assert b16.meta["stage2"]["ce_mean_token"] < np.log(TINY["codebook_size"])  # it learned


def test_resume_keeps_the_arithmetic_and_refuses_a_change_mid_stage(walk, tmp_path, monkeypatch):
    full = run(walk, tmp_path / "full.pt", precision="bf16")
    part = tmp_path / "part.pt"
    e = run(walk, part, precision="bf16", on_step=lambda s, k, logs: (s, k) == (2, 7))
    assert e.stopped_at == (2, 7)
    with pytest.raises(ValueError, match="precision='bf16'.*precision='fp32' conflicts"):
        train(walk, out=part, resume=part, precision="fp32", progress=False, device="cpu")
    train(walk, out=part, resume=part, progress=False, device="cpu")
    a, b = state_dicts(tmp_path / "full.pt"), state_dicts(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.meta["stage2"] == torch.load(part, weights_only=True)["meta"]["stage2"]

    # a checkpoint from before the option trained in fp32 and resumes in fp32, even where auto
    # would now pick bf16
    old = tmp_path / "old.pt"
    run(walk, old, precision="fp32", on_step=lambda s, k, logs: (s, k) == (2, 7))
    obj = torch.load(old, weights_only=True)
    del obj["meta"]["train_config"]["precision"], obj["train_state"]["precision"]
    torch.save(obj, old)
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: True)
    e = train(walk, out=old, resume=old, progress=False, device="cpu")
    assert e.meta["stage2"]["precision"] == "fp32"


def test_precision_may_change_at_the_stage_boundary(walk, tmp_path):
    one = tmp_path / "one.pt"
    run(walk, one, stage="1", precision="fp32")
    e = train(walk, out=one, resume=one, stage="2", precision="bf16", progress=False,
              device="cpu")
    assert e.meta["stage2"]["precision"] == "bf16"
    assert e.meta["train_config"]["precision"] == "bf16"


def test_bad_precision_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        train(tmp_path / "missing.csv", out=tmp_path / "m.pt", precision="fp16", progress=False)
    with pytest.raises(SystemExit):
        cli_main(["train", "--data", "sines", "--precision", "fp16", "--out",
                  str(tmp_path / "m.pt")])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
