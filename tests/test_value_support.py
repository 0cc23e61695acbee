"""Levels and point masses of the training data, restored in samples (`value_support.py`)."""
import numpy as np
import pytest
import torch

from timemar_engine.engine import Engine
from timemar_engine.value_support import MAX_LEVELS, MIN_MASS, ValueSupport


def unit_series(rng, rows: int = 5000) -> np.ndarray:
    """c0: 40% exactly at its minimum; c1: eight levels; c2: continuous; c3: 10% at its maximum."""
    x = rng.uniform(0.01, 0.99, size=(rows, 4))
    x[rng.random(rows) < 0.4, 0] = 0
    x[:, 1] = rng.integers(0, 8, rows) / 7
    x[rng.random(rows) < 0.1, 3] = 1
    x[0, :], x[1, :] = 0, 1  # every channel reaches both bounds once
    return x.astype(np.float32)


def test_fit_finds_levels_and_masses(rng):
    x = unit_series(rng)
    sup = ValueSupport.fit(x)
    assert list(sup.levels) == [1]
    np.testing.assert_array_equal(sup.levels[1], np.unique(x[:, 1]))
    assert set(sup.masses) == {(0, 0), (3, 1)} and not sup.thresholds
    assert sup.masses[(0, 0)] == pytest.approx((x[:, 0] == 0).mean(), abs=0)
    assert sup.masses[(3, 1)] == pytest.approx((x[:, 3] == 1).mean(), abs=0)
    chunked = ValueSupport.fit(x.reshape(1000, 5, 4), chunk_rows=333)  # windows, small chunks
    assert chunked.masses == sup.masses and chunked.levels.keys() == sup.levels.keys()
    # a channel just over the level limit is continuous; a share just under MIN_MASS is no mass
    y = np.tile(np.arange(MAX_LEVELS + 1, dtype=np.float32) / MAX_LEVELS, 200)[:, None]
    assert not ValueSupport.fit(y).levels
    z = rng.uniform(0.1, 1, size=(1000, 1)).astype(np.float32)
    z[:int(MIN_MASS * 1000) - 1] = 0
    assert not ValueSupport.fit(z)
    assert not ValueSupport.fit(rng.uniform(size=(500, 3)).astype(np.float32))


def test_calibrate_and_snap_against_references(rng):
    sup = ValueSupport.fit(unit_series(rng))
    samples = rng.beta(2, 3, size=(400, 24, 4))  # a model's unsnapped output, unit scale
    sup.calibrate(samples)
    flat = samples.reshape(-1, 4)
    assert sup.thresholds[(0, 0)] == pytest.approx(np.quantile(flat[:, 0], sup.masses[(0, 0)]))
    lo, span = np.array([-3.0, 10.0, 0.5, 2.0]), np.array([6.0, 70.0, 1.0, 0.25])
    x = (lo + samples * span).astype(np.float32)  # data scale
    got = sup.snap(x.copy(), lo, span)
    assert (got[..., 0] == -3).mean() == pytest.approx(sup.masses[(0, 0)], abs=1e-3)
    assert (got[..., 3] == 2.25).mean() == pytest.approx(sup.masses[(3, 1)], abs=1e-3)
    untouched = (x[..., 0] > -3 + sup.thresholds[(0, 0)] * 6)
    np.testing.assert_array_equal(got[..., 0][untouched], x[..., 0][untouched])
    np.testing.assert_array_equal(got[..., 2], x[..., 2])
    levels = (lo[1] + sup.levels[1] * span[1]).astype(np.float32).astype(np.float64)
    nearest = levels[np.abs(x[..., 1, None].astype(np.float64) - levels).argmin(-1)]
    np.testing.assert_array_equal(got[..., 1], nearest.astype(np.float32))


def test_round_trip_through_a_checkpoint_dict(rng, tmp_path):
    sup = ValueSupport.fit(unit_series(rng))
    sup.calibrate(rng.uniform(size=(50, 24, 4)))
    torch.save({"meta": {"value_support": sup.to_dict()}}, tmp_path / "m.pt")
    back = ValueSupport.from_dict(torch.load(tmp_path / "m.pt", weights_only=True)["meta"]
                                  ["value_support"])
    assert back.masses == sup.masses and back.thresholds == sup.thresholds
    np.testing.assert_array_equal(back.levels[1], sup.levels[1])
    assert not ValueSupport.from_dict(None) and not ValueSupport.from_dict({})
    assert sup.describe(["a", "b", "c", "d"]) == [
        "b: 8 levels", f"a: {sup.masses[(0, 0)]:.0%} at its minimum (calibrated)",
        f"d: {sup.masses[(3, 1)]:.0%} at its maximum (calibrated)"]


def test_trained_model_restores_zeros_and_levels(tmp_path, rng):
    """A table with a zero-inflated channel (irradiance-like: 0 at night) and an 8-level one."""
    from timemar_engine.train_api import train

    t = np.arange(3000)
    solar = np.maximum(0, np.sin(2 * np.pi * t / 24)) * (1 + 0.1 * rng.normal(size=3000))
    lights = (rng.random(3000) < 0.3) * rng.integers(1, 8, 3000) * 10.0
    temp = np.cos(2 * np.pi * t / 24) + 0.1 * rng.normal(size=3000).cumsum() / 10
    np.save(tmp_path / "table.npy", np.stack([solar, lights, temp], 1))
    ckpt = tmp_path / "m.pt"
    train(str(tmp_path / "table.npy"), out=ckpt, preset="xs", steps1=40, steps2=40,
          batch_size=32, device="cpu", progress=False)
    engine = Engine.load(ckpt, device="cpu")
    sup = engine.value_support
    assert list(sup.levels) == [1] and set(sup.masses) == {(0, 0)} and set(sup.thresholds) == {(0, 0)}
    share = (solar == 0).mean()
    assert sup.masses[(0, 0)] == pytest.approx(share)
    x = engine.sample(2048, seed=1)
    assert abs((x[..., 0] == 0).mean() - share) < 0.06
    assert set(np.unique(x[..., 1])) <= set(np.unique(lights.astype(np.float32)))
    raw = Engine.load(ckpt, device="cpu", snap_values=False)
    y = raw.sample(2048, seed=1)
    assert (y[..., 0] == 0).mean() < share - 0.1 and len(np.unique(y[..., 1])) > 8
    changed = x != y
    assert not changed[..., 2].any() and changed[..., :2].any()
    u = engine.sample(256, seed=2, scale="unit")
    assert (u[..., 0] == 0).any() and set(np.unique(u[..., 1])) <= set(sup.levels[1].astype(np.float32))
    np.testing.assert_array_equal(engine.sample(64, seed=3, scale="model"),
                                  raw.sample(64, seed=3, scale="model"))
    lines = engine.info()["value_support"]
    assert len(lines) == 2 and lines[0].endswith(": 8 levels")
    assert lines[1].endswith(f"{share:.0%} at its minimum (calibrated)")
