import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, tiny_config
from timemar_engine.checkpoint import save_checkpoint
from timemar_engine.cli import main as cli_main
from timemar_engine.data import MinMaxScaler
from timemar_engine.engine import Engine
from timemar_engine.evaluation import evaluate_checkpoint, real_windows
from timemar_engine.metrics import evaluate_arrays
from timemar_engine.model import TimeMAR

METRICS = ("discriminative", "predictive", "context_fid", "correlational")


def load_quality():
    spec = importlib.util.spec_from_file_location("quality", REPO / "bench" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quality_quick_on_sines(tmp_path, capsys):
    quality = load_quality()
    import quality_report
    out = tmp_path / "results"
    rc = quality.main(["--quick", "--datasets", "sines", "stocks", "--data-dir",
                       str(tmp_path / "no-data"), "--repeats", "2", "--device", "cpu",
                       "--out-dir", str(out), "--ckpt-dir", str(tmp_path / "ckpts"), "--quiet"])
    assert rc == 0
    assert "stocks: skipped" in capsys.readouterr().out
    report = json.loads((out / "quality_T24.json").read_text())
    for key in ("commit", "preset", "seed", "seq_len", "device", "torch", "created"):
        assert key in report
    assert report["seq_len"] == 24 and report["quick"] is True
    assert list(report["datasets"]) == ["sines"] and "not found" in report["skipped"]["stocks"]
    sines = report["datasets"]["sines"]
    assert sines["n_real"] == sines["n_fake"] == 10000 and sines["repeats"] == 2
    assert sines["steps"] == {"stage1": 30, "stage2": 30} and sines["train_minutes"] >= 0
    assert Path(sines["ckpt"]).parent == tmp_path / "ckpts" and Path(sines["ckpt"]).exists()
    for name in METRICS:
        m = sines["metrics"][name]
        assert len(m["runs"]) == 2 and math.isfinite(m["mean"]) and math.isfinite(m["ci95"])
    mem = sines["memorization"]  # trained with the harness's default --holdout 0.1
    assert mem["holdout_unseen"] and mem["n_reference"] + mem["n_probe"] == 1000
    assert mem["n_train"] == 9000
    assert report["holdout"] == 0.1

    md = (out / "quality_T24.md").read_text()
    assert "| metric | method | Sines |" in md and "Skipped: Stocks" in md
    for row in ("| Context-FID | TimeMAR (ours) | ", "| Context-FID | Diffusion-TS | 0.006±.000 |",
                "| Discriminative | TimeGAN | 0.011±.008 |",
                "| Predictive | Original (real data) | 0.094±.001 |"):
        assert row in md
    assert sum(line.startswith("| ") and "TimeMAR (ours)" in line for line in md.splitlines()) == 4
    ceiling = sines["ceiling"]  # the reconstructions of the real windows
    assert set(ceiling) == {"discriminative", "context_fid"}
    assert all(len(m["runs"]) == 2 for m in ceiling.values())
    c = ceiling["context_fid"]
    assert f"| Context-FID | TimeMAR reconstructions (ceiling) | {quality_report.fmt(c['mean'], c['ci95'])} |" in md
    assert sines["commit"] == report["commit"] and f"`{sines['commit'][:12]}`" in md
    assert len(sines["ce_per_scale"]) == 7
    # the transformer's fit on its training windows and on the held-out ones
    held_ce = sines["heldout_ce_mean_token"]
    assert held_ce > 0 and held_ce != sines["ce_mean_token"]
    assert f"per token {sines['ce_mean_token']:.2f} (held-out {held_ce:.2f})" in md
    assert sines["machine"].endswith(" threads") and f"| {sines['machine']} |" in md
    assert "| dataset | near-copies (held-out real) | DCR under held-out 5% |" in md
    assert f"| Sines | {100 * mem['near_copies']:.2f}% " in md


def test_quality_report_accumulates_over_runs(tmp_path, capsys, monkeypatch):
    quality = load_quality()
    out, ckpts = tmp_path / "results", tmp_path / "ckpts"
    base = ["--quick", "--datasets", "sines", "--repeats", "2", "--device", "cpu", "--out-dir",
            str(out), "--ckpt-dir", str(ckpts), "--quiet", "--no-ceiling"]
    assert quality.main(base) == 0
    first = json.loads((out / "quality_T24.json").read_text())["datasets"]["sines"]
    assert "ceiling" not in first
    trained = []
    monkeypatch.setattr(quality, "train", lambda *a: trained.append(a))
    capsys.readouterr()
    assert quality.main(base) == 0  # kept, not trained or scored again
    assert "sines: kept from commit" in capsys.readouterr().out and not trained
    assert json.loads((out / "quality_T24.json").read_text())["datasets"]["sines"] == first
    # other settings: a new report; --redo: the dataset runs again (here re-scored, --reuse)
    assert quality.main([*base, "--redo", "--reuse", "--repeats", "3"]) == 0
    assert "made with other settings" in capsys.readouterr().out
    again = json.loads((out / "quality_T24.json").read_text())["datasets"]["sines"]
    assert again["reused"] and again["repeats"] == 3 and not trained
    assert again["config"]["n_layer"] == 1 and again["config"]["causal_scales"] == 6
    capsys.readouterr()  # a saved checkpoint of another config than the preset gives: retrained
    monkeypatch.setitem(quality.QUICK_MODEL, "n_layer", 2)
    assert quality.main([*base, "--redo", "--reuse", "--repeats", "3"]) == 0
    assert "holds another model config" in capsys.readouterr().out and len(trained) == 1


def test_quality_reference_matches_protocol_table():
    load_quality()  # puts bench/ on the path for its report module
    import quality_report
    ref = quality_report.reference(24)
    assert len(ref) == 7 and all(len(row) == 6 for row in ref.values())
    assert ref[("correlational", "Diffusion-TS")]["fmri"] == "1.411±.042"
    assert ref[("context_fid", "TimeGAN")]["mujoco"] == "0.563±.052"


@pytest.fixture
def ckpt_and_csv(tmp_path, rng):
    model = TimeMAR(tiny_config())
    scaler = MinMaxScaler(np.zeros(3), np.full(3, 5.0))
    save_checkpoint(tmp_path / "m.pt", model, scaler, ["x", "y", "z"], {"dataset": "walk"})
    csv = tmp_path / "walk.csv"
    pd.DataFrame(np.cumsum(rng.normal(size=(80, 3)), axis=0), columns=["x", "y", "z"]).to_csv(
        csv, index=False)
    return tmp_path / "m.pt", csv


def test_evaluate_checkpoint_scores_samples_with_the_real_scaler(ckpt_and_csv, tmp_path):
    ckpt, csv = ckpt_and_csv
    engine = Engine.load(ckpt, device="cpu")
    res = evaluate_checkpoint(engine, str(csv), n=40, metrics=("correlational",), repeats=2,
                              seed=3, progress=False)
    assert res["n_real"] == 57 and res["n_fake"] == 40 and res["dataset"] == str(csv)
    assert res["ckpt"] == str(ckpt) and res["device"] == "cpu" and res["sample_seconds"] > 0
    real, scaler = real_windows(str(csv), None, 24)
    fake = scaler.to_unit(engine.sample(40, seed=3).astype(np.float64))
    ref = evaluate_arrays(real, fake, metrics=("correlational",), repeats=2, seed=3,
                          progress=False)
    assert res["metrics"] == ref["metrics"]
    # the CLI goes through the same function
    out = tmp_path / "e.json"
    assert cli_main(["evaluate", "--ckpt", str(ckpt), "--data", str(csv), "--n", "40", "--seed",
                     "3", "--repeats", "2", "--metrics", "correlational", "--device", "cpu",
                     "--json", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["metrics"] == ref["metrics"]


def test_evaluate_checkpoint_channel_mismatch(ckpt_and_csv, tmp_path, capsys):
    ckpt, _ = ckpt_and_csv
    two = tmp_path / "two.csv"
    pd.DataFrame(np.random.default_rng(0).normal(size=(40, 2)), columns=["a", "b"]).to_csv(
        two, index=False)
    assert cli_main(["evaluate", "--ckpt", str(ckpt), "--data", str(two), "--quiet"]) == 2
    assert "2 channels, the model 3" in capsys.readouterr().err


def test_evaluate_reconstructions_and_filtered_samples(ckpt_and_csv, tmp_path, capsys):
    ckpt, csv = ckpt_and_csv
    engine = Engine.load(ckpt, device="cpu")
    real, _ = real_windows(str(csv), None, 24)
    # reconstructions: every real window through the tokenizer, independently re-derived
    res = evaluate_checkpoint(engine, str(csv), metrics=("correlational",), repeats=2, seed=1,
                              progress=False, reconstruct=True)
    maps = engine.encode(real, scale="unit")
    recon = engine.decode(maps, scale="unit").astype(np.float64)
    ref = evaluate_arrays(real, recon, metrics=("correlational",), repeats=2, seed=1,
                          progress=False)
    assert res["scored"] == "reconstructions" and "memorization" not in res
    assert res["n_fake"] == len(real) and res["metrics"] == ref["metrics"]
    # samples with filters are the engine's filtered samples
    res = evaluate_checkpoint(engine, str(csv), n=30, metrics=("correlational",), repeats=2,
                              seed=2, progress=False, temperature=0.7, top_k=5,
                              memorization=False)
    _, scaler = real_windows(str(csv), None, 24)
    fake = scaler.to_unit(engine.sample(30, seed=2, temperature=0.7, top_k=5).astype(np.float64))
    ref = evaluate_arrays(real, fake, metrics=("correlational",), repeats=2, seed=2,
                          progress=False)
    assert res["metrics"] == ref["metrics"] and res["scored"] == "samples"
    assert res["sampling"] == {"temperature": 0.7, "top_k": 5, "top_p": None}
    base = ["evaluate", "--ckpt", str(ckpt), "--data", str(csv), "--metrics", "correlational",
            "--repeats", "2", "--quiet"]
    assert cli_main([*base, "--reconstruct"]) == 0
    assert "reconstructed (encoded and decoded) real windows" in capsys.readouterr().out
    assert cli_main([*base, "--reconstruct", "--n", "10", "--top-p", "0.9"]) == 2
    assert "--n, --top-p apply to sampling" in capsys.readouterr().err
    r, f = tmp_path / "r.npy", tmp_path / "f.npy"
    np.save(r, real), np.save(f, real)
    assert cli_main(["evaluate", "--real", str(r), "--fake", str(f), "--reconstruct",
                     "--metrics", "correlational", "--quiet"]) == 2
    assert "--reconstruct applies to sampling from a checkpoint" in capsys.readouterr().err


def fake_runner(calls: list):
    """A stand-in for quality.run_one recording its calls; the means grow with each call."""
    def fake_run(name, variant, args, commit, tag):
        calls.append((variant, name))
        m = {k: {"mean": 0.1 * len(calls), "ci95": 0.01, "runs": [0.1]} for k in METRICS}
        return {"metrics": m, "commit": commit, "created": "2026-12-04T00:00:00", "steps":
                {"stage1": 1, "stage2": 2}, "train_minutes": 1.0, "parameters": 5_400_000,
                "repeats": 5, "n_real": 10, "ckpt": "m.pt", "reused": False, "sample_seconds": 1.0,
                **({"train_minutes_budget": 2.0} if variant else {})}
    return fake_run


def test_quality_variants_run_after_the_main_table(tmp_path, datasets_dir, monkeypatch):
    quality = load_quality()
    calls = []
    monkeypatch.setattr(quality, "run_one", fake_runner(calls))
    out = tmp_path / "results"
    base = ["--datasets", "sines", "stocks", "--data-dir", str(datasets_dir), "--out-dir", str(out),
            "--quiet"]
    assert quality.main([*base, "--variants", "no-guidance", "l"]) == 0
    assert calls == [(None, "sines"), (None, "stocks"), ("no-guidance", "stocks"), ("l", "stocks")]
    report = json.loads((out / "quality_T24.json").read_text())
    assert set(report["variants"]) == {"no-guidance", "l"} and list(report["datasets"]) == [
        "sines", "stocks"]
    md = (out / "quality_T24.md").read_text()
    assert "## Ablations and model size" in md
    assert "| Stocks | `s` (main table) | 5.40M | 1.0 (30) | 1 / 2 |" in md
    assert "| Stocks | `l` | 5.40M | 1.0 (2) | 1 / 2 |" in md
    calls.clear()
    assert quality.main([*base, "--variants", "no-guidance", "single-path"]) == 0
    assert calls == [("single-path", "stocks")]  # the rest kept
    assert quality.main([*base, "--variants"]) == 0 and calls == [("single-path", "stocks")]
    calls.clear()  # an entry whose recorded config is not what its preset gives now runs again
    path = out / "quality_T24.json"
    report = json.loads(path.read_text())
    now = quality.preset_config("s", 24, 3).to_dict()
    report["datasets"]["sines"]["config"] = now
    report["datasets"]["stocks"]["config"] = {**now, "causal_scales": 0}
    report["variants"]["l"]["stocks"]["config"] = quality.preset_config("l", 24, 3).to_dict()
    report["variants"]["l"]["stocks"]["relabeled"] = "moved by a test"
    path.write_text(json.dumps(report))
    assert quality.main([*base, "--variants", "l"]) == 0 and calls == [(None, "stocks")]
    assert "Moved, Stocks (`l`): moved by a test." in (out / "quality_T24.md").read_text()


def test_quality_tables_keep_the_table_order_whatever_the_run_order(tmp_path, datasets_dir,
                                                                     monkeypatch):
    quality = load_quality()
    calls = []
    monkeypatch.setattr(quality, "run_one", fake_runner(calls))
    out = tmp_path / "results"
    assert quality.main(["--datasets", "stocks", "sines", "--data-dir", str(datasets_dir),
                         "--out-dir", str(out), "--quiet", "--variants"]) == 0
    assert calls == [(None, "stocks"), (None, "sines")]
    md = (out / "quality_T24.md").read_text()
    assert "| metric | method | Sines | Stocks |" in md
    assert md.index("| Sines | 10 |") < md.index("| Stocks | 10 |")  # training summary


def test_quality_long_windows_one_command(tmp_path, monkeypatch, rng):
    """--long trains and scores every (dataset, T) of the long-window report into
    quality_long.{json,md}, ETTh's and Energy's columns beside Diffusion-TS's Table 2."""
    quality = load_quality()
    data = tmp_path / "data"
    data.mkdir()
    for file in ("ETTh.csv", "energy_data.csv"):
        frame = pd.DataFrame(rng.normal(size=(600, 3)).cumsum(0), columns=["a", "b", "c"])
        frame.insert(0, "date", "2016-07-01 00:00:00")
        frame.to_csv(data / file, index=False)
    calls = []

    def fake_run(name, variant, args, commit, tag):
        calls.append((name, args.seq_len))
        return {**fake_runner([])(name, variant, args, commit, tag),
                "metrics": {k: {"mean": args.seq_len / 1000, "ci95": 0.01, "runs": [0.1]}
                            for k in METRICS}}

    monkeypatch.setattr(quality, "run_one", fake_run)
    out = tmp_path / "results"
    base = ["--long", "--data-dir", str(data), "--out-dir", str(out), "--quiet"]
    assert quality.main(base) == 0
    assert calls == [("etth", 64), ("etth", 128), ("etth", 256), ("energy", 64),
                     ("energy", 128), ("energy", 256), ("etth", 512)]
    assert not (out / "quality_T24.json").exists()
    report = json.loads((out / "quality_long.json").read_text())
    assert report["seq_len"] is None and list(report["datasets"])[0] == "etth_T64"
    md = (out / "quality_long.md").read_text()
    assert "# TimeMAR sample quality, long windows (T = 64, 128, 256, 512)" in md
    assert ("| metric | method | ETTh T=64 | ETTh T=128 | ETTh T=256 | ETTh T=512 | Energy T=64 "
            "| Energy T=128 | Energy T=256 |") in md
    assert ("| Discriminative | TimeMAR (ours) | 0.064±.010 | 0.128±.010 | 0.256±.010 | "
            "0.512±.010 | 0.064±.010 |") in md
    assert "| Discriminative | Diffusion-TS | 0.106 | 0.144 | 0.060 | — | 0.078 | 0.143 | 0.290 |" in md
    assert "| Context-FID | Diffusion-TS | 0.631 | 0.787 | 0.423 | — | 0.135 | 0.087 | 0.126 |" in md
    assert "| ETTh T=512 | 10 |" in md  # the training summary
    calls.clear()
    assert quality.main([*base, "--datasets", "energy"]) == 0 and calls == []  # all kept
    assert quality.main([*base, "--datasets", "energy", "--redo"]) == 0
    assert calls == [("energy", 64), ("energy", 128), ("energy", 256)]
