"""bench/residual_noise_probe.py: its AR(1) fit recovers a known process, and its draws have the
fitted statistics."""
import importlib.util

import numpy as np

from conftest import REPO


def load_probe():
    spec = importlib.util.spec_from_file_location("residual_noise_probe",
                                                  REPO / "bench" / "residual_noise_probe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ar1_windows(rng, n, T, phi, L, burn_in=64):
    """Windows of a stationary AR(1) r_t = phi * r_{t-1} + L e_t, simulated independently of the
    probe (a plain loop, float64)."""
    C = len(phi)
    r, out = np.zeros((n, C)), np.empty((n, T, C))
    for t in range(burn_in + T):
        r = phi * r + rng.standard_normal((n, C)) @ L.T
        if t >= burn_in:
            out[:, t - burn_in] = r
    return out


def test_fit_recovers_an_ar1_process_and_draws_match_it(rng):
    probe = load_probe()
    phi = rng.uniform(-0.5, 0.9, size=3)
    L = np.tril(rng.normal(size=(3, 3)) * 0.1) + np.diag(rng.uniform(0.05, 0.2, size=3))
    res = ar1_windows(rng, 4000, 24, phi, L)
    fit_phi, cov_innov, cov = probe.fit_noise(res)
    np.testing.assert_allclose(fit_phi, phi, atol=0.02)
    np.testing.assert_allclose(cov_innov, L @ L.T, rtol=0.05, atol=2e-4)
    drawn = probe.draw_noise(4000, 24, fit_phi, cov_innov, np.random.default_rng(1), True)
    np.testing.assert_allclose(np.cov(drawn.reshape(-1, 3), rowvar=False), cov, rtol=0.1,
                               atol=5e-4)
    lag1 = (drawn[:, 1:] * drawn[:, :-1]).mean((0, 1)) / (drawn ** 2).mean((0, 1))
    np.testing.assert_allclose(lag1, phi, atol=0.03)
    white = probe.draw_noise(4000, 24, fit_phi, cov, np.random.default_rng(2), False)
    np.testing.assert_allclose(np.cov(white.reshape(-1, 3), rowvar=False), cov, rtol=0.1,
                               atol=5e-4)
    assert (np.abs((white[:, 1:] * white[:, :-1]).mean((0, 1))) < 0.05 * cov.diagonal()).all()
