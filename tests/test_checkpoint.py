import os
import pickle

import numpy as np
import pytest
import torch

from conftest import tiny_config
from timemar_engine.checkpoint import (FORMAT_VERSION, CheckpointError, load_checkpoint,
                                       read_checkpoint, save_checkpoint)
from timemar_engine.data import MinMaxScaler
from timemar_engine.engine import Engine
from timemar_engine.model import TimeMAR


@pytest.fixture
def ckpt(tmp_path, rng):
    model = TimeMAR(tiny_config())
    with torch.no_grad():  # make the weights differ from a fresh init
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    scaler = MinMaxScaler(rng.normal(size=3), rng.normal(size=3) + 5)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, scaler, ["a", "b", "c"], {"dataset": "toy", "steps": 3})
    return path, model


def test_round_trip_bit_identical_samples(ckpt):
    path, model = ckpt
    loaded, scaler, channels, meta, _ = load_checkpoint(path)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert channels == ["a", "b", "c"] and meta["dataset"] == "toy"
    e1 = Engine.load(path, device="cpu")
    e2 = Engine.load(path, device="cpu")
    s1 = e1.sample(37, batch_size=16, seed=11)
    s2 = e2.sample(37, batch_size=16, seed=11)
    np.testing.assert_array_equal(s1, s2)
    assert s1.shape == (37, 24, 3) and s1.dtype == np.float32
    assert not np.array_equal(s1, e1.sample(37, batch_size=16, seed=12))


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_and_never_executed(tmp_path, ckpt):
    marker = tmp_path / "pwned"
    obj = torch.load(ckpt[0], weights_only=True)
    obj["meta"] = {"payload": RunsACommand(marker)}
    bad = tmp_path / "evil.pt"
    torch.save(obj, bad)
    with pytest.raises(CheckpointError, match="refused.*pickled Python objects"):
        Engine.load(bad, device="cpu")
    assert not marker.exists()
    # sanity: the payload is real (a plain unpickler would run it)
    with open(tmp_path / "raw.pkl", "wb") as fh:
        pickle.dump(RunsACommand(marker), fh)
    with open(tmp_path / "raw.pkl", "rb") as fh:
        pickle.load(fh)
    assert marker.exists()


def test_truncated_and_corrupt_files(tmp_path, ckpt):
    data = ckpt[0].read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt: truncated or corrupt"):
        read_checkpoint(cut)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="junk.pt: truncated or corrupt"):
        read_checkpoint(junk)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "absent.pt")


def test_wrong_version_and_wrong_content(tmp_path, ckpt):
    obj = torch.load(ckpt[0], weights_only=True)
    obj["format_version"] = FORMAT_VERSION + 41
    torch.save(obj, tmp_path / "v.pt")
    with pytest.raises(CheckpointError, match="format version 42 is not supported"):
        read_checkpoint(tmp_path / "v.pt")
    torch.save({"weights": torch.ones(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a timemar-engine checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    obj["format_version"] = FORMAT_VERSION
    del obj["gpt"]
    torch.save(obj, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="lacks gpt"):
        read_checkpoint(tmp_path / "partial.pt")
    obj = torch.load(ckpt[0], weights_only=True)
    obj["config"]["codebook_size"] = 7
    torch.save(obj, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not fit together"):
        load_checkpoint(tmp_path / "mismatch.pt")
