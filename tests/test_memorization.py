"""The memorisation check: held-out splits, nearest-window distances, the report, and its wiring
into `train --holdout` and `evaluate`."""
import json

import numpy as np
import pytest

from timemar_engine import train
from timemar_engine.cli import main as cli_main
from timemar_engine.data import DataError, WindowSet
from timemar_engine.evaluation import evaluate_checkpoint, memorization_check
from timemar_engine.holdout import reference_and_probe, split_starts, split_windows
from timemar_engine.metrics.memorization import memorization_report, nearest_distances
from timemar_engine.train_api import TrainError

TINY = {"hidden": 16, "code_dim": 8, "codebook_size": 32, "d_model": 32, "n_layer": 1,
        "n_head": 2, "attn_heads": 2}


@pytest.mark.parametrize("n,span,fraction", [(1000, 24, 0.1), (240, 24, 0.2), (997, 7, 0.33),
                                             (50, 1, 0.1), (10000, 1, 0.25)])
def test_split_starts_never_shares_a_row(n, span, fraction):
    train_s, held_s = split_starts(n, span, fraction)
    train_rows = np.zeros(n, bool)
    held_rows = np.zeros(n, bool)
    for s in train_s:
        train_rows[s:s + span] = True
    for s in held_s:
        held_rows[s:s + span] = True
    assert not (train_rows & held_rows).any()
    assert train_s.max() + span <= n and held_s.max() + span <= n
    assert len(np.unique(train_s)) == len(train_s) and len(np.unique(held_s)) == len(held_s)
    # about `fraction` of the rows are held out, spread over the span (not only the tail)
    assert abs(held_rows.mean() - fraction) < 0.05
    if n * fraction >= 2 * (2 * span + 1):  # room for two held-out blocks or more
        assert held_s.min() < n // 2


def test_split_starts_rejects_what_cannot_be_split():
    with pytest.raises(DataError, match="held-out"):
        split_starts(80, 24, 0.1)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(DataError, match="fraction"):
            split_starts(1000, 24, bad)


def test_split_windows_subsets_gather_the_same_windows(rng):
    series = rng.random((500, 3)).astype(np.float32)
    full = WindowSet(series, 24)
    tr, held = split_windows(full, 0.2)
    assert len(tr) == len(tr.starts) and len(held) == len(held.starts)
    idx = rng.integers(0, len(held), 17)
    np.testing.assert_array_equal(held.gather(idx), full.gather(held.starts[idx]))
    np.testing.assert_array_equal(tr.array(), full.array()[tr.starts])
    chunks = np.concatenate([c for _, c in held.chunks(batch=7)])
    np.testing.assert_array_equal(chunks, full.array()[held.starts])
    with pytest.raises(IndexError):
        held.gather([len(held)])
    cut = WindowSet(rng.random((60, 24, 2)).astype(np.float32), 24)  # ready-cut windows
    tr3, held3 = split_windows(cut, 0.2)
    assert len(tr3) + len(held3) == 60 and not set(tr3.starts) & set(held3.starts)


def test_nearest_distances_match_brute_force_float64(rng):
    ref = rng.random((301, 6, 4))
    query = rng.random((53, 6, 4))
    query[:5] = ref[[0, 17, 300, 150, 150]]  # exact copies
    got = nearest_distances(query, ref)
    d = np.sqrt(((query[:, None] - ref[None]) ** 2).mean(axis=(2, 3)))
    np.testing.assert_allclose(got, d.min(1), rtol=1e-6, atol=1e-6)
    assert (got[:5] < 1e-6).all()
    with pytest.raises(ValueError, match="same T and C"):
        nearest_distances(query[:, :5], ref)


def sine_windows(rng, n: int, T: int = 24, C: int = 3) -> np.ndarray:
    t = np.arange(T)[None, :, None]
    f, p = rng.uniform(0.05, 0.3, (n, 1, C)), rng.uniform(0, 2 * np.pi, (n, 1, C))
    return (np.sin(f * t + p) + 1) / 2 + rng.normal(0, 0.02, (n, T, C))


def test_report_flags_copies_and_passes_fresh_draws(rng):
    train_w, ref, probe = sine_windows(rng, 3000), sine_windows(rng, 400), sine_windows(rng, 400)
    fresh = memorization_report(train_w, ref, probe, sine_windows(rng, 1500), seed=1)
    assert not fresh["suspect"] and fresh["near_copies"] == fresh["probe_near_copies"] == 0
    for test in ("dcr", "nndr"):
        assert 0.01 < fresh[test]["below_probe_q05"] < 0.1
        assert 0.8 < fresh[test]["fake"]["median"] / fresh[test]["probe"]["median"] < 1.25
    copies = train_w[rng.integers(0, 3000, 1500)] + rng.normal(0, 1e-5, (1500, 24, 3))
    copied = memorization_report(train_w, ref, probe, copies, seed=1)
    assert copied["suspect"] and copied["near_copies"] > 0.99
    assert copied["dcr"]["below_probe_q05"] > 0.99 and copied["nndr"]["below_probe_q05"] > 0.99
    # noisy copies are no near-copies, but both distance tests see them
    noisy = memorization_report(train_w, ref, probe, copies + rng.normal(0, 0.01, copies.shape))
    assert not noisy["suspect"] and noisy["nndr"]["below_probe_q05"] > 0.9
    # copies of a quarter of the windows, the rest new
    part = np.concatenate([copies[:375], sine_windows(rng, 1125)])
    partly = memorization_report(train_w, ref, probe, part, seed=1)
    assert partly["suspect"] and 0.2 < partly["near_copies"] < 0.3
    assert 0.25 < partly["nndr"]["below_probe_q05"] < 0.4
    # a repetitive dataset with real near-copies: generated near-copies at that rate are no flag
    flat = np.full((300, 24, 3), 0.5)
    rep = memorization_report(np.concatenate([train_w, flat]), np.concatenate([ref, flat[:40]]),
                              np.concatenate([probe, flat[:40]]),
                              np.concatenate([sine_windows(rng, 1350), flat[:150]]))
    assert 0.05 < rep["probe_near_copies"] and not rep["suspect"]
    assert copied["n_fake"] == 1500 and copied["n_probe"] == 400 and copied["n_train"] == 3000
    capped = memorization_report(train_w, ref, probe, copies, max_queries=100, seed=1)
    assert capped["n_fake"] == capped["n_probe"] == 100


def test_reference_and_probe_share_no_row(rng):
    series = WindowSet(rng.random((2000, 2)).astype(np.float32), 24)
    for fraction in (0.1, 0.04):  # several held-out blocks, then a single one
        _, held = split_windows(series, fraction)
        ref, probe = reference_and_probe(held)
        assert len(ref) + len(probe) <= len(held) and len(ref) > 0 and len(probe) > 0
        rows_ref = set((ref.starts[:, None] + np.arange(24)).ravel())
        rows_probe = set((probe.starts[:, None] + np.arange(24)).ravel())
        assert not rows_ref & rows_probe


@pytest.fixture
def walk(rng):
    return np.cumsum(rng.normal(size=(1200, 3)), axis=0)


def test_train_holdout_is_recorded_and_checked(walk, tmp_path):
    out = tmp_path / "m.pt"
    engine = train(walk, out=out, preset="xs", overrides=TINY, steps1=5, steps2=3,
                   batch_size=16, holdout=0.2, progress=False, device="cpu")
    full = WindowSet(walk.astype(np.float32), 24)
    tr, held = split_windows(full, 0.2)
    assert engine.meta["holdout"] == {"fraction": 0.2, "train_windows": len(tr),
                                      "holdout_windows": len(held)}
    assert engine.meta["n_windows"] == len(tr) < len(full)
    # the same split on resume; a different one is refused before any work
    with pytest.raises(TrainError, match="holdout=0.2"):
        train(walk, out=out, resume=out, holdout=0.1, progress=False)
    with pytest.raises(TrainError, match=r"\[0, 0.5\]"):
        train(walk, out=tmp_path / "bad.pt", holdout=0.9, progress=False)
    csv = tmp_path / "walk.csv"
    np.savetxt(csv, walk, delimiter=",", header="a,b,c", comments="")
    res = evaluate_checkpoint(engine, str(csv), n=200, metrics=("correlational",), repeats=1,
                              progress=False)
    m = res["memorization"]
    assert m["holdout_unseen"] and m["holdout_fraction"] == 0.2
    assert m["n_reference"] + m["n_probe"] == len(held) and m["n_train"] == len(tr)
    assert m["n_fake"] == 200 and 0 <= m["nndr"]["below_probe_q05"] <= 1
    assert m["dcr"]["fake"]["median"] > 0
    # a model trained on everything: the check still runs, on the default split, and says so
    everything = train(walk, out=tmp_path / "all.pt", preset="xs", overrides=TINY, steps1=5,
                       steps2=3, batch_size=16, progress=False, device="cpu")
    m = evaluate_checkpoint(everything, str(csv), n=100, metrics=("correlational",), repeats=1,
                            progress=False)["memorization"]
    assert not m["holdout_unseen"] and m["holdout_fraction"] == 0.1


def test_train_scores_the_held_out_windows(walk, tmp_path, capsys):
    """The stage reports score the held-out windows too: recomputed here in float64 from the
    trained model (tokens from `Engine.encode`), not via the trainer's report code."""
    import copy

    import torch
    import torch.nn.functional as F

    engine = train(walk, out=tmp_path / "m.pt", preset="xs", overrides=TINY, steps1=40,
                   steps2=40, batch_size=16, holdout=0.2, progress=True, device="cpu")
    printed = capsys.readouterr().out
    s1, s2 = engine.meta["stage1"], engine.meta["stage2"]
    unit = engine.scaler.to_unit(walk).astype(np.float32)
    held = split_windows(WindowSet(unit, 24), 0.2)[1].array(np.float64)
    model = copy.deepcopy(engine.model).double()
    tokens = [torch.from_numpy(t) for t in engine.encode(held, scale="unit")]
    x = torch.from_numpy(held) * 2 - 1
    with torch.no_grad():
        x_hat = model.vqvae.decode(model.vqvae.quant.decode_indices(tokens))
        logits = model.gpt(model.vqvae.quant.teacher_inputs(tokens)).double()
    assert s1["heldout_recon_mse"] == pytest.approx(float(((x_hat - x) ** 2).mean()), rel=1e-4)
    target = torch.cat(tokens, 1)
    nll = -F.log_softmax(logits, -1).gather(-1, target[..., None])[..., 0]  # (n, L)
    assert s2["heldout_ce_mean_token"] == pytest.approx(float(nll.mean()), rel=1e-4)
    per_scale = [float(c.mean()) for c in nll.split(list(engine.cfg.scales), dim=1)]
    np.testing.assert_allclose(s2["heldout_ce_per_scale"], per_scale, rtol=1e-3)
    assert s2["heldout_ce_mean_token"] != s2["ce_mean_token"]  # another set than training's
    assert (f"{s2['ce_mean_token']:.3f} on training windows, {s2['heldout_ce_mean_token']:.3f} "
            "on held-out windows") in printed
    assert f"{s1['heldout_recon_mse']:.5f} on held-out windows" in printed
    # without a holdout nothing is held out, and nothing is reported
    plain = train(walk, out=tmp_path / "p.pt", preset="xs", overrides=TINY, steps1=5, steps2=3,
                  batch_size=16, progress=False, device="cpu")
    assert "heldout_recon_mse" not in plain.meta["stage1"]
    assert "heldout_ce_mean_token" not in plain.meta["stage2"]


def test_memorization_check_skips_data_too_short_to_split(rng):
    windows = WindowSet(rng.random((80, 3)).astype(np.float32), 24)
    m = memorization_check(windows, rng.random((10, 24, 3)), {})
    assert "held-out" in m["skipped"]


def test_cli_holdout_and_no_memorization(walk, tmp_path, capsys):
    csv = tmp_path / "walk.csv"
    np.savetxt(csv, walk, delimiter=",", header="a,b,c", comments="")
    with pytest.raises(SystemExit):
        cli_main(["train", "--data", str(csv), "--holdout", "0.7", "--out", str(tmp_path / "x.pt")])
    assert "[0, 0.5]" in capsys.readouterr().err
    ckpt = tmp_path / "m.pt"
    tiny = [f"--set={k}={v}" for k, v in TINY.items()]
    assert cli_main(["train", "--data", str(csv), "--preset", "xs", *tiny, "--steps1", "4",
                     "--steps2", "2", "--batch-size", "16", "--holdout", "0.25", "--out",
                     str(ckpt), "--device", "cpu", "--quiet"]) == 0
    base = ["evaluate", "--ckpt", str(ckpt), "--data", str(csv), "--n", "64", "--metrics",
            "correlational", "--repeats", "1", "--device", "cpu", "--quiet"]
    capsys.readouterr()
    assert cli_main([*base, "--json", str(tmp_path / "e.json")]) == 0
    text = capsys.readouterr().out
    assert "memorisation:" in text and "held out of training" in text
    assert json.loads((tmp_path / "e.json").read_text())["memorization"]["holdout_unseen"]
    assert cli_main([*base, "--no-memorization", "--json", str(tmp_path / "f.json")]) == 0
    assert "memorisation" not in capsys.readouterr().out
    assert "memorization" not in json.loads((tmp_path / "f.json").read_text())
