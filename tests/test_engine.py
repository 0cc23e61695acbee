import numpy as np
import pytest
import torch

from conftest import tiny_config
from timemar_engine.checkpoint import save_checkpoint
from timemar_engine.data import MinMaxScaler
from timemar_engine.engine import Engine, default_checkpoint
from timemar_engine.model import TimeMAR


@pytest.fixture
def engine(tmp_path, rng):
    model = TimeMAR(tiny_config())
    lo = rng.normal(size=3)
    scaler = MinMaxScaler(lo, lo + rng.uniform(1, 10, size=3))
    save_checkpoint(tmp_path / "m.pt", model, scaler, ["a", "b", "c"], {})
    return Engine.load(tmp_path / "m.pt", device="cpu")


def test_scales_are_consistent(engine):
    model = engine.sample(20, seed=5, scale="model")
    unit = engine.sample(20, seed=5, scale="unit")
    data = engine.sample(20, seed=5)
    assert model.min() >= -1 and model.max() <= 1
    np.testing.assert_allclose(unit, (model + 1) / 2, atol=1e-6)
    np.testing.assert_allclose(data, engine.scaler.from_unit(unit.astype(np.float64)), rtol=1e-5,
                               atol=1e-5)


def test_sample_to_streams_the_same_windows(engine, tmp_path):
    ref = engine.sample(50, batch_size=16, seed=3)
    out = engine.sample_to(tmp_path / "s.npy", 50, batch_size=16, seed=3)
    np.testing.assert_array_equal(np.load(out), ref)
    with pytest.raises(FileExistsError):
        engine.sample_to(out, 5, seed=1)
    engine.sample_to(out, 5, seed=1, overwrite=True)
    assert np.load(out).shape == (5, 24, 3)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_csv_and_parquet_outputs(engine, tmp_path):
    import pandas as pd

    ref = engine.sample(7, batch_size=3, seed=4)
    for name in ("s.csv", "s.parquet"):
        path = engine.sample_to(tmp_path / name, 7, batch_size=3, seed=4)
        df = pd.read_csv(path) if name.endswith("csv") else pd.read_parquet(path)
        assert list(df.columns) == ["window", "step", "a", "b", "c"]
        assert len(df) == 7 * 24
        np.testing.assert_allclose(df[["a", "b", "c"]].to_numpy().reshape(7, 24, 3), ref,
                                   rtol=1e-6)
        assert df["window"].max() == 6 and df["step"].max() == 23


def test_failed_write_leaves_nothing(engine, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk on fire")
        yield

    monkeypatch.setattr(engine, "iter_batches", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        engine.sample_to(tmp_path / "x.npy", 10)
    assert list(tmp_path.iterdir()) == [tmp_path / "m.pt"]


def test_bad_arguments(engine, tmp_path):
    for n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            engine.sample(n)
    with pytest.raises(ValueError, match="scale"):
        engine.sample(3, scale="kelvin")
    with pytest.raises(ValueError, match="unknown backend"):
        Engine.load(tmp_path / "m.pt", backend="warp")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Engine.load(tmp_path / "m.pt", device="cuda")


def test_info(engine):
    info = engine.info()
    assert info["channels"] == ["a", "b", "c"] and info["seq_len"] == 24
    assert info["parameters"]["total"] == sum(p.numel() for p in engine.model.parameters())


def test_packaged_default_model_samples():
    path = default_checkpoint()
    if not path.exists():
        pytest.fail(f"the packaged default model is missing at {path}")
    e = Engine.load(device="cpu")
    x = e.sample(64, seed=0)
    assert x.shape == (64, e.seq_len, len(e.channels)) and np.isfinite(x).all()
    assert e.meta.get("dataset") == "energy"
