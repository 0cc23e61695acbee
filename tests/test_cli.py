import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from timemar_engine.cli import main

TINY = ["--preset", "xs", "--set", "hidden=16", "--set", "code_dim=8", "--set", "codebook_size=32",
        "--set", "d_model=32", "--set", "n_layer=1", "--set", "n_head=2", "--quiet"]


@pytest.fixture
def csv_data(tmp_path, rng):
    n = 200
    walk = np.cumsum(rng.normal(size=(n, 3)), axis=0)
    df = pd.DataFrame(walk, columns=["x", "y", "z"])
    df.insert(0, "stamp", pd.date_range("2024-01-01", periods=n, freq="h").astype(str))
    path = tmp_path / "walk.csv"
    df.to_csv(path, index=False)
    return path, walk


@pytest.fixture
def trained(tmp_path, csv_data):
    out = tmp_path / "m.pt"
    with pytest.warns(UserWarning, match="stamp"):
        rc = main(["train", "--data", str(csv_data[0]), "--out", str(out), "--steps1", "30",
                   "--steps2", "20", "--batch-size", "16", *TINY])
    assert rc == 0
    return out


def test_train_sample_info_end_to_end(trained, tmp_path, csv_data, capsys):
    obj = torch.load(trained, weights_only=True)
    assert obj["meta"]["stage1"]["steps"] == 30 and obj["meta"]["stage2"]["steps"] == 20
    assert "train_state" not in obj
    out = tmp_path / "s.npy"
    assert main(["sample", "--ckpt", str(trained), "--n", "50", "--out", str(out), "--seed", "1",
                 "--quiet"]) == 0
    a = np.load(out)
    assert a.shape == (50, 24, 3) and a.dtype == np.float32 and np.isfinite(a).all()
    walk = csv_data[1]
    assert (a.min((0, 1)) >= walk.min(0) - 1e-4).all() and (a.max((0, 1)) <= walk.max(0) + 1e-4).all()
    # refuse to overwrite, then --force
    assert main(["sample", "--ckpt", str(trained), "--n", "5", "--out", str(out), "--quiet"]) != 0
    assert "exists" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(trained), "--n", "5", "--out", str(out), "--force",
                 "--quiet"]) == 0
    assert np.load(out).shape == (5, 24, 3)
    assert main(["sample", "--ckpt", str(trained), "--n", "4", "--out", str(tmp_path / "s.csv"),
                 "--quiet"]) == 0
    assert len(pd.read_csv(tmp_path / "s.csv")) == 4 * 24
    capsys.readouterr()
    assert main(["info", "--ckpt", str(trained), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["channels"] == ["x", "y", "z"] and info["parameters"]["total"] > 0
    assert main(["info", "--ckpt", str(trained)]) == 0
    assert "transformer" in capsys.readouterr().out


def test_resume_and_stage_selection(tmp_path, csv_data):
    out = tmp_path / "s1.pt"
    with pytest.warns(UserWarning):
        assert main(["train", "--data", str(csv_data[0]), "--out", str(out), "--stage", "1",
                     "--steps1", "20", "--batch-size", "16", *TINY]) == 0
    obj = torch.load(out, weights_only=True)
    assert "stage2" not in obj["meta"] and obj["train_state"]["stage"] == 2
    with pytest.warns(UserWarning):
        assert main(["train", "--data", str(csv_data[0]), "--resume", str(out), "--out", str(out),
                     "--stage", "2", "--steps2", "15", "--batch-size", "16", "--quiet"]) == 0
    obj2 = torch.load(out, weights_only=True)
    assert obj2["meta"]["stage2"]["steps"] == 15
    for k, v in obj["vqvae"].items():  # stage 2 leaves the VQ-VAE untouched
        assert torch.equal(v, obj2["vqvae"][k])


def test_cli_errors(tmp_path, csv_data, capsys):
    assert main(["sample", "--ckpt", str(tmp_path / "nope.pt"), "--n", "3",
                 "--out", str(tmp_path / "o.npy")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    bad = tmp_path / "nan.csv"
    bad.write_text("a,b\n" + "\n".join(f"{i},{i}" for i in range(30)) + "\n1,nan\n")
    assert main(["train", "--data", str(bad), "--out", str(tmp_path / "m.pt"), *TINY]) == 2
    assert "row 30, column 'b'" in capsys.readouterr().err
    short = tmp_path / "short.csv"
    short.write_text("a,b\n1,2\n3,4\n")
    assert main(["train", "--data", str(short), "--out", str(tmp_path / "m.pt"), *TINY]) == 2
    assert "too few rows" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--n", "0"])
    assert main(["train", "--data", str(csv_data[0]), "--stage", "2", "--out",
                 str(tmp_path / "x.pt"), *TINY]) == 2
    assert "needs --resume" in capsys.readouterr().err
    # config fields are checked before the data is read (no warning about its date column yet)
    assert main(["train", "--data", str(csv_data[0]), "--out", str(tmp_path / "y.pt"),
                 *TINY, "--set", "bogus=1"]) == 2
    assert "unknown config fields: ['bogus']" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [[], ["train"], ["sample"], ["info"]])
def test_help(cmd):
    r = subprocess.run([sys.executable, "-m", "timemar_engine.cli", *cmd, "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0
    assert "usage: timemar-engine" in r.stdout and len(r.stdout) > 250
