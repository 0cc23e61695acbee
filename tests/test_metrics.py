"""Tests of the four benchmark metrics (shared/PROTOCOL.md sections 2-3)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from timemar_engine.metrics import (context_fid, correlational_score, discriminative_score,
                                    evaluate_arrays, frechet_distance, predictive_score, summarize)
from timemar_engine.metrics._common import StackedGRU
from timemar_engine.metrics.context_fid import (_SameConv, hierarchical_contrastive_loss,
                                                train_ts2vec)
from timemar_engine.metrics.correlational import cross_correlation
from timemar_engine.metrics.discriminative import discriminative_runs
from timemar_engine.metrics.predictive import predictive_runs

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _sines(n: int, seed: int, T: int = 24, C: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = rng.uniform(0, 0.1, (n, 1, C))
    p = rng.uniform(0, 0.1, (n, 1, C))
    return (np.sin(f * np.arange(T)[None, :, None] + p) + 1) / 2


@pytest.fixture(scope="module")
def sines_split():
    """Real-vs-real: two disjoint halves of one Sines draw; wrong generators: the second half
    with each window's time steps shuffled, and uniform noise."""
    s = _sines(2400, seed=11)
    a, b = s[:1200], s[1200:]
    rng = np.random.default_rng(3)
    shuffled = np.take_along_axis(b, np.argsort(rng.random(b.shape[:2]), axis=1)[:, :, None], axis=1)
    noise = rng.random(b.shape)
    return a, b, shuffled, noise


# ----------------------------------------------------------------------------- correlational
def _ref_crosscorr(x: np.ndarray) -> np.ndarray:
    """Independent float64 reference: global per-channel standardisation (unbiased std over
    all samples and steps), then for i >= j the lag-0 product averaged over t, then samples."""
    n, T, C = x.shape
    z = np.empty_like(x)
    for c in range(C):
        v = x[:, :, c]
        mu = v.sum() / v.size
        sd = math.sqrt(((v - mu) ** 2).sum() / (v.size - 1))
        z[:, :, c] = (v - mu) / sd
    out = []
    for i in range(C):
        for j in range(i + 1):
            per_sample = [np.mean(z[k, :, i] * z[k, :, j]) for k in range(n)]
            out.append(np.mean(per_sample))
    return np.array(out)


def test_cross_correlation_matches_numpy_reference():
    rng = np.random.default_rng(0)
    x = rng.random((13, 7, 4)) ** np.arange(1, 5)          # channels with different shapes
    x[:, :, 2] += 0.5 * x[:, :, 0]                          # and some real correlation
    got = cross_correlation(x)
    ref = _ref_crosscorr(x)
    assert got.shape == (4 * 5 // 2,)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    i, j = np.tril_indices(4)                               # diagonal entries are (n T - 1)/(n T)
    np.testing.assert_allclose(got[i == j], (13 * 7 - 1) / (13 * 7), rtol=1e-12)


def test_correlational_score_matches_reference_on_its_subsample():
    rng = np.random.default_rng(1)
    real, fake = rng.random((50, 6, 3)), rng.random((40, 6, 3)) ** 2
    # documented draw: size = int(N_real / 5) with replacement, real then fake, default_rng(seed)
    draw = np.random.default_rng(5)
    ri, fi = draw.integers(0, 50, 10), draw.integers(0, 40, 10)
    ref = np.abs(_ref_crosscorr(fake[fi]) - _ref_crosscorr(real[ri])).sum() / 10
    assert correlational_score(real, fake, seed=5) == pytest.approx(ref, rel=1e-10)


def test_correlational_constant_channel_is_finite():
    x = np.random.default_rng(2).random((20, 5, 3))
    x[:, :, 1] = 0.25
    assert np.isfinite(correlational_score(x, x, seed=0))


# ----------------------------------------------------------------------------- FID formula
def _ref_fid(a, b):
    """Independent route: Tr sqrt(S_a S_b) = Tr sqrt(S_a^1/2 S_b S_a^1/2) (symmetric eig)."""
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    ra = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(ra @ sb @ ra)
    return mu @ mu + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(np.clip(ev, 0, None)).sum()


def test_frechet_distance_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    assert abs(frechet_distance(a, a)) < 1e-8
    d = np.array([0.5, -1.0, 2.0, 0.0, 0.1, 3.0])
    assert frechet_distance(a, a + d) == pytest.approx(d @ d, rel=1e-8)      # same covariance
    b = rng.normal(size=(300, 6)) * np.array([1, 2, 3, 1, 0.5, 1]) + 1.0
    assert frechet_distance(a, b) == pytest.approx(_ref_fid(a, b), rel=1e-8)
    assert frechet_distance(a, b) > 1.0
    with pytest.raises(ValueError, match="2-D"):
        frechet_distance(a[None], b)


# ----------------------------------------------------------------------------- GRU cell
def test_gru_matches_tf1_cell_reference():
    net = StackedGRU([3, 4], in_dim=4, hidden=3)
    H = 3
    # TF1 init: gate bias 1, candidate bias 0, head bias 0, Glorot bounds on the full kernels
    b = net.b.detach().numpy()
    assert np.all(b[:, :, :2 * H] == 1.0) and np.all(b[:, :, 2 * H:] == 0.0)
    assert np.all(net.bo.detach().numpy() == 0.0)
    assert np.abs(net.ug.detach().numpy()).max() <= math.sqrt(6 / (4 + 3 + 6))
    assert np.abs(net.uc.detach().numpy()).max() <= math.sqrt(6 / (4 + 3 + 3))
    assert not torch.equal(net.wx[0], net.wx[1])                       # repeats differ
    x = torch.rand(2, 5, 6, 4)
    with torch.no_grad():
        hs = net.states(x, all_steps=True).numpy()
        last = net.states(x, all_steps=False).numpy()
        logit = net.head(net.states(x, all_steps=False)).numpy()
    sig = lambda v: 1 / (1 + np.exp(-v))
    for r in range(2):
        wx, ug, uc = (t.detach().double().numpy()[r] for t in (net.wx, net.ug, net.uc))
        gate_k = np.vstack([wx[:, :2 * H], ug])            # [x, h] -> (r, u)
        cand_k = np.vstack([wx[:, 2 * H:], uc])            # [x, r*h] -> c
        bg, bc = b[r, 0, :2 * H], b[r, 0, 2 * H:]
        h = np.zeros((5, H))
        for t in range(6):
            xt = x[r, :, t].double().numpy()
            g = sig(np.hstack([xt, h]) @ gate_k + bg)
            rg, ug_ = g[:, :H], g[:, H:]
            c = np.tanh(np.hstack([xt, rg * h]) @ cand_k + bc)
            h = ug_ * h + (1 - ug_) * c
            np.testing.assert_allclose(hs[r, :, t], h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(last[r], h, rtol=1e-5, atol=1e-6)
        wo, bo = net.wo.detach().double().numpy()[r], net.bo.detach().double().numpy()[r]
        np.testing.assert_allclose(logit[r], (h @ wo + bo)[:, 0], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- TS2Vec parts
def test_same_conv_fast_path_is_exact():
    torch.manual_seed(0)
    conv = _SameConv(5, 6, 3, dilation=32)
    x = torch.randn(4, 5, 24, requires_grad=True)
    fast = conv(x)                                           # dilation >= length: centre tap only
    full = conv.conv(x)
    assert fast.shape == full.shape == (4, 6, 24)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    g1 = torch.autograd.grad(fast.square().sum(), x)[0]
    g2 = torch.autograd.grad(full.square().sum(), x)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-5)


def _ref_hier_loss(z1, z2, alpha=0.5):
    """Reference with the diagonal removed by index shifting (tril/triu), not masking."""
    def inst(a, b):
        B = a.shape[0]
        if B == 1:
            return 0.0
        z = torch.cat([a, b], 0).transpose(0, 1)
        sim = z @ z.transpose(1, 2)
        lg = torch.tril(sim, -1)[:, :, :-1] + torch.triu(sim, 1)[:, :, 1:]
        lg = -torch.log_softmax(lg, -1)
        i = torch.arange(B)
        return (lg[:, i, B + i - 1].mean() + lg[:, B + i, i].mean()) / 2

    def temp(a, b):
        T = a.shape[1]
        if T == 1:
            return 0.0
        z = torch.cat([a, b], 1)
        sim = z @ z.transpose(1, 2)
        lg = torch.tril(sim, -1)[:, :, :-1] + torch.triu(sim, 1)[:, :, 1:]
        lg = -torch.log_softmax(lg, -1)
        t = torch.arange(T)
        return (lg[:, t, T + t - 1].mean() + lg[:, T + t, t].mean()) / 2

    loss, d = 0.0, 0
    while z1.shape[1] > 1:
        loss = loss + alpha * inst(z1, z2) + (1 - alpha) * temp(z1, z2)
        d += 1
        z1 = torch.nn.functional.max_pool1d(z1.transpose(1, 2), 2).transpose(1, 2)
        z2 = torch.nn.functional.max_pool1d(z2.transpose(1, 2), 2).transpose(1, 2)
    loss = loss + alpha * inst(z1, z2)
    return loss / (d + 1)


@pytest.mark.parametrize("B,L", [(4, 7), (3, 16), (1, 5), (5, 1)])
def test_hierarchical_loss_matches_reference(B, L):
    g = torch.Generator().manual_seed(B * 100 + L)
    z1, z2 = torch.randn(B, L, 6, generator=g), torch.randn(B, L, 6, generator=g)
    torch.testing.assert_close(hierarchical_contrastive_loss(z1, z2),
                               torch.as_tensor(_ref_hier_loss(z1, z2), dtype=torch.float32),
                               rtol=1e-5, atol=1e-6)


def test_ts2vec_uses_swa_average():
    data = torch.from_numpy(_sines(40, 0).astype(np.float32))
    avg = train_ts2vec(data, seed=0, iterations=7, batch_size=8)
    assert isinstance(avg, torch.optim.swa_utils.AveragedModel)
    assert int(avg.n_averaged) == 8                    # initial weights + one per step
    assert not avg.training
    out = avg(data[:3])
    assert out.shape == (3, 24, 320)


# ----------------------------------------------------------------------------- behaviour
def test_seeded_and_stacked_repeats_reproducible(sines_split):
    a, b, shuffled, _ = sines_split
    a, s = a[:300], shuffled[:300]
    d1 = discriminative_score(a, s, seed=4, iterations=60)
    assert discriminative_score(a, s, seed=4, iterations=60) == d1
    runs = discriminative_runs(a, s, seeds=[3, 4], iterations=60)
    assert abs(runs[1] - d1) <= 1.0 / 120 + 1e-12          # at most one test window flips
    p1 = predictive_score(a, s, seed=4, iterations=60)
    assert predictive_score(a, s, seed=4, iterations=60) == p1
    assert predictive_runs(a, s, seeds=[3, 4], iterations=60)[1] == pytest.approx(p1, rel=1e-4)
    c1 = context_fid(a, s, seed=4, iterations=5)
    assert context_fid(a, s, seed=4, iterations=5) == c1
    assert context_fid(a, s, seed=5, iterations=5) != c1
    assert correlational_score(a, s, seed=4) == correlational_score(a, s, seed=4)
    assert correlational_score(a, s, seed=4) != correlational_score(a, s, seed=5)


def test_real_vs_real_and_wrong_generators(sines_split):
    a, b, shuffled, noise = sines_split
    d_rr = discriminative_score(a, b, seed=0, iterations=400)
    d_noise = discriminative_score(a, noise, seed=0, iterations=400)
    assert d_rr <= 0.05
    assert d_noise >= 0.3
    f_rr = context_fid(a, b, seed=0, iterations=40)
    f_shuf = context_fid(a, shuffled, seed=0, iterations=40)
    assert f_rr < 0.05
    assert f_shuf > 0.1 and f_shuf > 10 * f_rr
    p_rr = predictive_score(a, b, seed=0, iterations=300)
    p_noise = predictive_score(a, noise, seed=0, iterations=300)
    assert p_noise > p_rr + 0.05
    c_rr = correlational_score(a, b, seed=0)
    c_noise = correlational_score(a, noise, seed=0)
    assert c_noise > 3 * c_rr


def _load_windows(name: str) -> np.ndarray:
    """All protocol windows of a benchmark dataset in [0, 1] (skips when the files are absent)."""
    from timemar_engine.data import load_dataset, prepare

    d = Path(os.environ.get("TIMEMAR_DATA_DIR", REPO.parent / "shared" / "datasets"))
    file = {"stocks": "stock_data.csv", "energy": "energydata_complete.csv"}[name]
    if not (d / file).exists():
        pytest.skip(f"benchmark file {file} not found in {d} (set TIMEMAR_DATA_DIR)")
    return prepare(load_dataset(name, d), 24)[0].astype(np.float64)


def test_stocks_real_vs_real_and_noise():
    """Two disjoint random halves of Stocks are indistinguishable; uniform noise is not."""
    w = _load_windows("stocks")
    perm = np.random.default_rng(0).permutation(len(w))
    a, b = w[perm[: len(w) // 2]], w[perm[len(w) // 2:]]
    noise = np.random.default_rng(1).random(b.shape)
    assert discriminative_score(a, b, seed=0, iterations=400) <= 0.05
    assert discriminative_score(a, noise, seed=0, iterations=400) >= 0.3
    f_rr = context_fid(a, b, seed=0, iterations=40)
    assert f_rr < 0.05 and context_fid(a, noise, seed=0, iterations=40) > 100 * f_rr
    assert correlational_score(a, b, seed=0) < 0.05 < correlational_score(a, noise, seed=0)


@pytest.mark.parametrize("name,channels,original", [("stocks", 6, 0.036), ("energy", 28, 0.250)])
def test_predictive_reproduces_original_row(name, channels, original):
    """Real data as the training set, protocol settings (5000 iterations, batch 128)."""
    w = _load_windows(name)
    assert w.shape[1:] == (24, channels)
    score = predictive_score(w, w, seed=0)
    assert abs(score - original) <= 0.01, score


# ----------------------------------------------------------------------------- report
def test_summarize_t_interval():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["mean"] == 3.0 and s["runs"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert s["ci95"] == pytest.approx(2.7764451052 * math.sqrt(2.5) / math.sqrt(5), rel=1e-8)
    assert summarize([0.5])["ci95"] is None
    with pytest.raises(ValueError):
        summarize([])


def test_evaluate_arrays_structure():
    rng = np.random.default_rng(0)
    real, fake = rng.random((60, 8, 4)), rng.random((50, 8, 4))
    res = evaluate_arrays(real, fake, repeats=2, seed=7, progress=True,
                          iterations={"discriminative": 5, "predictive": 5, "context_fid": 2})
    assert set(res) == {"metrics", "n_real", "n_fake", "seq_len", "channels", "repeats", "seed", "seconds"}
    assert (res["n_real"], res["n_fake"], res["seq_len"], res["channels"]) == (60, 50, 8, 4)
    assert (res["repeats"], res["seed"]) == (2, 7)
    assert list(res["metrics"]) == ["discriminative", "predictive", "context_fid", "correlational"]
    assert set(res["seconds"]) == set(res["metrics"])
    for m in res["metrics"].values():
        assert set(m) == {"mean", "ci95", "runs"} and len(m["runs"]) == 2
        assert m["mean"] == pytest.approx(np.mean(m["runs"]))
    # repeat i uses seed + i
    assert res["metrics"]["correlational"]["runs"][1] == correlational_score(real, fake, seed=8)
    json.dumps(res)
    only = evaluate_arrays(real, fake, metrics=("correlational",), repeats=3, progress=False)
    assert list(only["metrics"]) == ["correlational"]


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("fn", [discriminative_score, predictive_score, context_fid, correlational_score])
def test_validation_errors(fn):
    ok = np.random.default_rng(0).random((20, 6, 3))
    kw = dict(seed=0, iterations=1) if fn is not correlational_score else dict(seed=0)
    with pytest.raises(ValueError, match="3-D"):
        fn(ok[0], ok, **kw)
    with pytest.raises(ValueError, match="same \\(T, C\\)"):
        fn(ok, ok[:, :5], **kw)
    with pytest.raises(ValueError, match="same \\(T, C\\)"):
        fn(ok, ok[:, :, :2], **kw)
    bad = ok.copy()
    bad[3, 2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        fn(ok, bad, **kw)
    bad[3, 2, 1] = np.inf
    with pytest.raises(ValueError, match="`real` contains NaN or inf"):
        fn(bad, ok, **kw)
    with pytest.raises(ValueError, match="at least"):
        fn(ok[:0], ok, **kw)


def test_metric_specific_validation():
    x = np.random.default_rng(0).random((20, 6, 1))
    with pytest.raises(ValueError, match="channel"):
        predictive_score(x, x, seed=0, iterations=1)               # needs C >= 2
    y = np.random.default_rng(0).random((20, 6, 3))
    with pytest.raises(ValueError, match="at least 2 windows"):
        discriminative_score(y[:1], y, seed=0, iterations=1)
    with pytest.raises(ValueError, match="length >= 2"):
        context_fid(y[:, :1], y[:, :1], seed=0, iterations=1)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_arrays(y, y, metrics=("fid",))
    with pytest.raises(ValueError, match="repeats"):
        evaluate_arrays(y, y, repeats=0)
    with pytest.raises(ValueError, match="iteration setting"):
        evaluate_arrays(y, y, iterations={"correlational": 3})
    with pytest.warns(UserWarning, match=r"\[0, 1\]"):
        correlational_score(y * 10, y, seed=0)
