"""bench/prefix_probe.py: its draws after a real prefix follow the reference sampler."""
import importlib.util

import numpy as np
import pytest
import torch

from conftest import REPO, tiny_config
from timemar_engine.checkpoint import save_checkpoint
from timemar_engine.data import MinMaxScaler
from timemar_engine.engine import Engine
from timemar_engine.model import TimeMAR
from timemar_engine.sampling import generate


def load_probe():
    spec = importlib.util.spec_from_file_location("prefix_probe", REPO / "bench" / "prefix_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_engine(tmp_path, rng, causal_scales: int = 0) -> Engine:
    model = TimeMAR(tiny_config(causal_scales=causal_scales))
    scaler = MinMaxScaler(np.zeros(3), np.ones(3))
    save_checkpoint(tmp_path / "m.pt", model, scaler, ["a", "b", "c"], {})
    return Engine.load(tmp_path / "m.pt", device="cpu")


@pytest.mark.parametrize("causal_scales", [0, 2])
def test_prefix_probe_matches_reference_and_keeps_prefix(tmp_path, rng, causal_scales):
    probe, engine = load_probe(), tiny_engine(tmp_path, rng, causal_scales)
    K, B = len(engine.cfg.scales), 16
    real = rng.uniform(0, 1, size=(B, 24, 3))
    prefix = [torch.as_tensor(t) for t in engine.encode(real, scale="unit")]
    ones = [1.0] * K
    # no real scale: the same draws as the reference sampler with the same generator
    drawn = probe.draw_after_prefix(engine, prefix, 0, ones, torch.Generator().manual_seed(5))
    _, ref = generate(engine.model, B, torch.Generator().manual_seed(5), return_indices=True)
    for a, b in zip(drawn, ref):
        np.testing.assert_array_equal(a, b.numpy())
    # every scale real: the real windows' tokens, untouched
    kept = probe.draw_after_prefix(engine, prefix, K, ones, torch.Generator().manual_seed(5))
    for a, b in zip(kept, prefix):
        np.testing.assert_array_equal(a, b.numpy())
    # a partial prefix: the first maps real, the later ones drawn (not all equal to the real ones)
    part = probe.draw_after_prefix(engine, prefix, 2, ones, torch.Generator().manual_seed(5))
    for k in range(2):
        np.testing.assert_array_equal(part[k], prefix[k].numpy())
    assert any((part[k] != prefix[k].numpy()).any() for k in range(2, K))
