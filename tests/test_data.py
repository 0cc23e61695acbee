import numpy as np
import pandas as pd
import pytest

from timemar_engine.data import (DataError, MinMaxScaler, load_dataset, load_file, make_windows,
                                 prepare, sines)


def write_csv(path, text):
    path.write_text(text)
    return path


def test_csv_drops_non_numeric_columns_with_warning(tmp_path, rng):
    values = rng.normal(size=(40, 2))
    df = pd.DataFrame({"date": [f"2020-01-{i:02d}" for i in range(40)], "a": values[:, 0],
                       "label": ["x"] * 40, "b": values[:, 1]})
    df.to_csv(tmp_path / "d.csv", index=False)
    with pytest.warns(UserWarning, match="date, label"):
        s = load_file(tmp_path / "d.csv")
    assert s.columns == ["a", "b"]
    np.testing.assert_allclose(s.values, values)


def test_csv_quoted_numbers_with_spaces_are_numeric(tmp_path):
    p = write_csv(tmp_path / "q.csv", 'date,"x","y"\n"d1","  60","1.5"\n"d2","  70","2.5"\n')
    with pytest.warns(UserWarning, match="date"):
        s = load_file(p)
    np.testing.assert_allclose(s.values, [[60, 1.5], [70, 2.5]])


def test_nan_error_names_row_and_column(tmp_path):
    p = write_csv(tmp_path / "n.csv", "a,b\n1,2\n3,\n5,6\n")
    with pytest.raises(DataError, match=r"row 1, column 'b'"):
        load_file(p)


def test_inf_in_npy_is_reported(tmp_path, rng):
    a = rng.normal(size=(30, 3))
    a[7, 2] = np.inf
    np.save(tmp_path / "x.npy", a)
    with pytest.raises(DataError, match="row 7"):
        load_file(tmp_path / "x.npy")


def test_nan_policies_drop_and_ffill(tmp_path):
    p = write_csv(tmp_path / "n.csv", "a,b\n1,2\n3,\n5,6\n")
    np.testing.assert_allclose(load_file(p, nan="drop").values, [[1, 2], [5, 6]])
    np.testing.assert_allclose(load_file(p, nan="ffill").values, [[1, 2], [3, 2], [5, 6]])


def test_ragged_rows(tmp_path):
    p = write_csv(tmp_path / "r.csv", "a,b\n1,2\n3,4,5\n6,7\n")
    with pytest.raises(DataError, match="ragged"):
        load_file(p)


def test_short_row_becomes_located_nan_error(tmp_path):
    p = write_csv(tmp_path / "r.csv", "a,b\n1,2\n3\n6,7\n")
    with pytest.raises(DataError, match="row 1"):
        load_file(p)


def test_zero_numeric_columns(tmp_path):
    p = write_csv(tmp_path / "s.csv", "name,city\nann,rome\nbob,oslo\n")
    with pytest.raises(DataError, match="no numeric columns"), pytest.warns(UserWarning):
        load_file(p)


def test_too_few_rows(rng):
    with pytest.raises(DataError, match="too few rows: 10 rows"):
        make_windows(rng.normal(size=(10, 2)), 24)


def test_unsupported_and_missing(tmp_path):
    (tmp_path / "x.xlsx").write_text("nope")
    with pytest.raises(DataError, match="unsupported"):
        load_file(tmp_path / "x.xlsx")
    with pytest.raises(DataError, match="no such file"):
        load_file(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("nonsense", tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_dataset("stocks", tmp_path)


def test_npy_2d_and_3d_and_mat_and_parquet(tmp_path, rng):
    from scipy.io import savemat

    series = rng.normal(size=(50, 4))
    np.save(tmp_path / "s.npy", series)
    np.testing.assert_array_equal(load_file(tmp_path / "s.npy").values, series)
    wins = rng.normal(size=(9, 24, 4))
    np.save(tmp_path / "w.npy", wins)
    loaded = load_file(tmp_path / "w.npy")
    assert make_windows(loaded.values, 24).shape == (9, 24, 4)
    with pytest.raises(DataError, match="windows of length 24"):
        make_windows(loaded.values, 12)
    savemat(tmp_path / "m.mat", {"ts": series, "other": series[:, :2]})
    np.testing.assert_allclose(load_file(tmp_path / "m.mat", variable="ts").values, series)
    with pytest.raises(DataError, match="choose a variable"):
        load_file(tmp_path / "m.mat")
    pd.DataFrame(series, columns=list("abcd")).to_parquet(tmp_path / "p.parquet")
    s = load_file(tmp_path / "p.parquet")
    assert s.columns == list("abcd")
    np.testing.assert_allclose(s.values, series)


def test_windows_stride_one(rng):
    v = rng.normal(size=(30, 2))
    w = make_windows(v, 24)
    assert w.shape == (7, 24, 2)
    np.testing.assert_array_equal(w[3], v[3:27])


def test_scaler_round_trip_and_constant_channel(rng):
    v = rng.normal(size=(100, 3)) * [1, 10, 0] + [0, 5, 7]
    sc = MinMaxScaler.fit(v)
    u = sc.to_unit(v)
    assert u.min() >= 0 and u.max() <= 1
    np.testing.assert_allclose(u[:, :2].min(0), 0)
    np.testing.assert_allclose(u[:, :2].max(0), 1)
    np.testing.assert_array_equal(u[:, 2], 0)
    np.testing.assert_allclose(sc.from_unit(u), v, atol=1e-12)


def test_sines_generator():
    a, b = sines(n=50, seed=123), sines(n=50, seed=123)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.values.shape == (50, 24, 5) and 0 <= a.values.min() and a.values.max() <= 1
    # the protocol's draw order: first sample, first channel: freq then phase
    r = np.random.RandomState(123)
    f, p = r.uniform(0, 0.1), r.uniform(0, 0.1)
    np.testing.assert_allclose(a.values[0, :, 0], (np.sin(f * np.arange(24) + p) + 1) / 2)
    w, sc = prepare(a, 24)
    np.testing.assert_allclose(w, a.values.astype(np.float32))


@pytest.mark.parametrize("name,n,c", [("stocks", 3662, 6), ("etth", 17397, 7),
                                      ("energy", 19712, 28), ("fmri", 9977, 50),
                                      ("mujoco", 10000, 14)])
def test_named_datasets(datasets_dir, name, n, c):
    w, sc = prepare(load_dataset(name, datasets_dir), 24)
    assert w.shape == (n, 24, c)
    assert w.min() == 0 and w.max() == 1


def test_window_stats_against_direct_computation(rng):
    from timemar_engine.evaluation import window_stats

    w = rng.normal(size=(40, 24, 3)).cumsum(axis=1) * [1, 2, 3] + [0, 5, -5]
    s = window_stats(w)
    for c in range(3):
        x = w[:, :, c]
        pairs = np.array([(x[i, t], x[i, t + 1]) for i in range(40) for t in range(23)])
        np.testing.assert_allclose([s["mean"][c], s["std"][c], s["lag1"][c]],
                                   [x.mean(), x.std(), np.corrcoef(pairs.T)[0, 1]], rtol=1e-10)
    assert (s["lag1"] > 0.5).all() and (s["lag1"] <= 1).all()  # random walks: strongly correlated
