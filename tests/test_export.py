"""Decoder export: ONNX round trips in onnxruntime, the export command, TensorRT when present."""
import importlib.util
import re

import numpy as np
import pytest
import torch

from conftest import tiny_config
from timemar_engine import export
from timemar_engine.checkpoint import save_checkpoint
from timemar_engine.cli import main
from timemar_engine.config import preset
from timemar_engine.data import MinMaxScaler
from timemar_engine.model import TimeMAR

for _m in ("onnx", "onnxruntime", "onnxscript"):
    pytest.importorskip(_m, reason="pip install 'timemar-engine[export]' to test ONNX export")

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def make_scaler(rng, channels: int) -> MinMaxScaler:
    """Ranges of a few units around random offsets; channel 0 is constant (lo == hi)."""
    lo = rng.normal(size=channels)
    hi = lo + rng.uniform(1, 10, size=channels)
    hi[0] = lo[0]
    return MinMaxScaler(lo, hi)


def random_latents(model: TimeMAR, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    with torch.no_grad():
        return model.vqvae.quant.decode_indices(
            [torch.randint(cfg.codebook_size, (n, s), generator=g) for s in cfg.scales])


def reference(model, scaler, f, scale):
    with torch.no_grad():
        return export.DecoderGraph(model, scaler, scale)(f)


def test_xs_onnx_file_round_trip_dynamic_batch(tmp_path, rng):
    model = TimeMAR(preset("xs", seq_len=24, channels=3)).eval()
    scaler = make_scaler(rng, 3)
    path = export.export_onnx(model, scaler, tmp_path / "d.onnx", "data")
    dec = export.OrtDecoder(path)
    assert dec.window_shape == (24, 3)
    for n in (1, 1000):  # one export, two batch sizes
        f = random_latents(model, n, seed=n)
        out = dec(f)
        assert out.shape == (n, 24, 3) and out.dtype == torch.float32
        assert float((out - reference(model, scaler, f, "data")).abs().max()) <= 1e-4
        assert export.validate_onnx(path, model, scaler, f, "data") <= 1e-4
        assert (out[..., 0] == np.float32(scaler.lo[0])).all()  # constant channel: exactly lo
    # the graph computes what Engine does: eager decode, clamp, numpy scaling in float64
    with torch.no_grad():
        x = model.vqvae.decode(f).clamp_(-1, 1).numpy()
    eager = scaler.from_unit((x + 1) / 2).astype(np.float32)
    np.testing.assert_allclose(reference(model, scaler, f, "data").numpy(), eager, atol=1e-5)
    with pytest.raises(FileExistsError):
        export.export_onnx(model, scaler, path, "data", overwrite=False)
    assert [p.name for p in tmp_path.iterdir()] == ["d.onnx"]  # no temp files left


def test_s_from_model_in_memory(rng):
    model = TimeMAR(preset("s", seq_len=24, channels=4)).eval()
    scaler = make_scaler(rng, 4)
    dec = export.OrtDecoder.from_model(model, scaler, "unit")
    for n in (1, 1000):
        f = random_latents(model, n, seed=n)
        ref = reference(model, scaler, f, "unit")
        assert ref.min() >= 0 and ref.max() <= 1
        assert float((dec(f) - ref).abs().max()) <= 1e-4


def test_seq_len_64_schedule(tmp_path, rng):
    cfg = preset("xs", seq_len=64, channels=2)
    assert cfg.latent_len == 16 and cfg.n_downsample == 2
    model = TimeMAR(cfg).eval()
    scaler = make_scaler(rng, 2)
    path = export.export_onnx(model, scaler, tmp_path / "d64.onnx", "model")
    dec = export.OrtDecoder(path)
    assert dec.window_shape == (64, 2)
    for n in (1, 7):
        f = random_latents(model, n, seed=n)
        assert float((dec(f) - reference(model, scaler, f, "model")).abs().max()) <= 1e-4


@pytest.fixture
def ckpt(tmp_path, rng):
    path = tmp_path / "m.pt"
    save_checkpoint(path, TimeMAR(tiny_config()), make_scaler(rng, 3), ["a", "b", "c"], {})
    return path


def errors_printed(out: str) -> list[float]:
    line = next(ln for ln in out.splitlines() if ln.startswith("max abs error, onnxruntime"))
    assert "random latents" in line and "sampled latents" in line
    return [float(v) for v in re.findall(r"(\d\.\d+e[-+]\d+) on", line)]


def test_cli_export_validates_and_refuses_overwrite(ckpt, tmp_path, capsys):
    out = tmp_path / "dec.onnx"
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    errors = errors_printed(capsys.readouterr().out)
    assert len(errors) == 2 and max(errors) <= 1e-4
    assert export.OrtDecoder(out).window_shape == (24, 3)
    size = out.stat().st_size
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out), "--scale", "model"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.stat().st_size == size
    assert main(["export", "--ckpt", str(ckpt), "--out", str(out), "--scale", "model",
                 "--force"]) == 0
    assert max(errors_printed(capsys.readouterr().out)) <= 1e-4
    f = torch.rand(5, 8, 12) * 2 - 1
    assert export.OrtDecoder(out)(f).abs().max() <= 1  # now the model-scale graph


def test_cli_usage_errors(ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "--help"])
    assert e.value.code == 0 and "--format {onnx,tensorrt}" in capsys.readouterr().out
    assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "x.onnx"),
                 "--max-batch", "8"]) == 2
    assert "--format tensorrt only" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_missing_onnx_dependency(ckpt, tmp_path, capsys, monkeypatch):
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else find(name, *a))
    with pytest.raises(export.MissingDependency, match=r"pip install 'timemar-engine\[export\]'"):
        export.require_onnx()
    assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "onnxscript not installed" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed")
def test_tensorrt_missing_is_one_line(ckpt, tmp_path, capsys):
    out = tmp_path / "dec.plan"
    assert main(["export", "--ckpt", str(ckpt), "--format", "tensorrt", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {export.TRT_MISSING}\n"
    assert list(tmp_path.iterdir()) == [ckpt]
    with pytest.raises(export.MissingDependency, match="TensorRT is not installed"):
        export.TrtDecoder(b"")


@pytest.mark.skipif(not (HAS_TRT and torch.cuda.is_available()),
                    reason="TensorRT needs a CUDA GPU" if HAS_TRT else "tensorrt is not installed")
def test_tensorrt_plan_matches_pytorch(tmp_path, rng):
    model = TimeMAR(tiny_config()).eval()
    scaler = make_scaler(rng, 3)
    onnx_path = export.export_onnx(model, scaler, tmp_path / "d.onnx", "data")
    kw = dict(checkpoint_sha256="0" * 64, scale="data", max_batch=256, cache_dir=tmp_path / "c")
    plan = export.build_tensorrt(onnx_path, tmp_path / "d.plan", **kw)
    (cached,) = (tmp_path / "c").iterdir()
    for n in (1, 256):
        f = random_latents(model, n, seed=n)
        assert export.validate_tensorrt(plan, model, scaler, f, "data") <= 1e-4
    stamp = cached.stat().st_mtime_ns
    export.build_tensorrt(onnx_path, tmp_path / "d2.plan", **kw)  # same key: from the cache
    assert cached.stat().st_mtime_ns == stamp
    assert (tmp_path / "d2.plan").read_bytes() == plan.read_bytes()


def test_engine_decodes_through_onnxruntime(ckpt):
    """decoder='onnxruntime': the engine's windows equal the PyTorch decode of its own tokens."""
    from timemar_engine import Engine
    e = Engine.load(ckpt, device="cpu", backend="engine", decoder="onnxruntime")
    assert e.info()["decoder"] == "onnxruntime"
    sampler = e._sampler.samplers[0]
    assert sampler.decode_fn is not None and not sampler.fuses_scaling
    x, idx = sampler.generate(300, torch.Generator().manual_seed(0), return_indices=True)
    ref = e.decode([i.numpy() for i in idx], scale="model")
    np.testing.assert_allclose(x.numpy(), ref, atol=1e-5, rtol=0)
    got = e.sample(70, seed=3, scale="unit")
    assert got.shape == (70, 24, 3) and np.isfinite(got).all() and got.min() >= 0 and got.max() <= 1


def test_decoder_choice_errors(ckpt, capsys):
    from timemar_engine import Engine
    with pytest.raises(ValueError, match="unknown decoder 'onnx'"):
        Engine.load(ckpt, device="cpu", decoder="onnx")
    with pytest.raises(ValueError, match="use backend 'engine'"):
        Engine.load(ckpt, device="cpu", backend="eager", decoder="onnxruntime")
    assert Engine.load(ckpt, device="cpu").info()["decoder"] == "pytorch"
    if not HAS_TRT:
        code = main(["sample", "--ckpt", str(ckpt), "--n", "5", "--out", str(ckpt.parent / "x.npy"),
                     "--decoder", "tensorrt", "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(err) == 1 and "TensorRT is not installed" in err[0], err
        assert not (ckpt.parent / "x.npy").exists()
