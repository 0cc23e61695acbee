import numpy as np
import pandas as pd
import pytest

from timemar_engine import data
from timemar_engine.data import (DataError, MinMaxScaler, WindowSet, load_any, load_dataset,
                                 load_file, make_windows, prepare, sines)


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
    series = load_dataset(name, datasets_dir)
    w, sc = prepare(series, 24)
    assert w.shape == (n, 24, c)
    assert w.min() == 0 and w.max() == 1
    ws = WindowSet.from_series(series, 24, sc)
    idx = np.random.default_rng(0).integers(0, n, 100)
    np.testing.assert_array_equal(ws.gather(idx), w[idx])


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


# --- the bounded data path: WindowSet, memory-mapped .npy, chunk-wise passes -------------------

@pytest.fixture
def small_chunks(monkeypatch):
    """Chunk-wise passes of a few rows, so every test crosses many chunk boundaries."""
    monkeypatch.setattr(data, "CHUNK", 7 * 3)


def old_windows(values, scaler, seq_len):
    """The previous data path: all windows scaled in float64, then cast to float32."""
    return scaler.to_unit(make_windows(values, seq_len)).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(500, 3), (60, 24, 3)])
def test_windowset_equals_old_path_bit_for_bit(small_chunks, rng, dtype, shape):
    values = (rng.normal(size=shape).cumsum(axis=0) * [1, 100, 0] + [0, 7, 5]).astype(dtype)
    series = data.Series(values, ["a", "b", "c"])
    scaler = MinMaxScaler.for_series(series)
    np.testing.assert_array_equal(scaler.lo, values.reshape(-1, 3).min(0))
    np.testing.assert_array_equal(scaler.hi, values.reshape(-1, 3).max(0))
    ref = old_windows(values, scaler, 24)
    ws = WindowSet.from_series(series, 24, scaler)
    assert len(ws) == len(ref) and ws.channels == 3 and ws.seq_len == 24
    assert ws.unit.dtype == np.float32 and ws.unit.shape == values.shape  # scaled once, not cut
    idx = rng.integers(0, len(ws), 200)
    got = ws.gather(idx)
    assert got.dtype == np.float32 and got.shape == (200, 24, 3)
    np.testing.assert_array_equal(got, ref[idx])
    assert got.view(np.int32).tobytes() == ref[idx].view(np.int32).tobytes()
    starts, parts = zip(*ws.chunks(64))
    assert starts == tuple(range(0, len(ws), 64))
    np.testing.assert_array_equal(np.concatenate(parts), ref)
    np.testing.assert_array_equal(ws.array(), ref)
    np.testing.assert_array_equal(ws.array(np.float64), ref.astype(np.float64))
    np.testing.assert_array_equal(prepare(series, 24)[0], ref)
    with pytest.raises(IndexError):
        ws.gather([len(ws)])
    with pytest.raises(IndexError):
        ws.gather([-1])


def test_windowset_rejects_bad_lengths(rng):
    with pytest.raises(DataError, match="too few rows"):
        WindowSet.from_series(data.Series(rng.normal(size=(10, 2)), ["a", "b"]), 24,
                              MinMaxScaler.identity(2))
    with pytest.raises(DataError, match="windows of length 24, not 12"):
        WindowSet(np.zeros((5, 24, 2), np.float32), 12)


def test_npy_is_memory_mapped_not_copied(tmp_path, rng, small_chunks):
    series = rng.normal(size=(300, 4)).astype(np.float32)
    np.save(tmp_path / "s.npy", series)
    s = load_file(tmp_path / "s.npy")
    assert isinstance(s.values, np.memmap) and s.values.dtype == np.float32
    assert not s.values.flags.writeable
    np.testing.assert_array_equal(s.values, series)
    sc = MinMaxScaler.fit(s.values)  # chunk-wise: same min/max as the whole-array reduction
    assert sc.lo.dtype == np.float64
    np.testing.assert_array_equal(sc.lo, series.min(0))
    np.testing.assert_array_equal(sc.hi, series.max(0))
    np.save(tmp_path / "i.npy", np.arange(60).reshape(20, 3))
    ints = load_file(tmp_path / "i.npy").values
    assert ints.dtype == np.float64 and not isinstance(ints, np.memmap)


def test_chunked_nonfinite_check_finds_the_first_bad_value(tmp_path, rng, small_chunks):
    a = rng.normal(size=(200, 3)).astype(np.float32)
    a[150, 1], a[170, 0] = np.nan, -np.inf
    np.save(tmp_path / "x.npy", a)
    with pytest.raises(DataError, match=r"2 NaN/inf value\(s\); first at row 150, column 'ch1'"):
        load_file(tmp_path / "x.npy")
    np.testing.assert_array_equal(load_file(tmp_path / "x.npy", nan="drop").values,
                                  np.delete(a, [150, 170], axis=0))
    filled = load_file(tmp_path / "x.npy", nan="ffill").values
    assert filled[150, 1] == a[149, 1] and filled[170, 0] == a[169, 0]
    w = rng.normal(size=(30, 24, 2))
    w[20, 5, 1] = np.nan
    np.save(tmp_path / "w.npy", w)
    with pytest.raises(DataError, match="window 20, step 5, column 'ch1'"):
        load_file(tmp_path / "w.npy", nan="drop")


def test_constant_channel_round_trips_exactly(rng):
    sc = MinMaxScaler(np.array([5.0, -2.0]), np.array([5.0, 3.0]))
    assert sc.from_unit(np.array([0.05, 0.5]))[0] == 5.0  # span 0: any unit value is lo
    np.testing.assert_array_equal(sc.from_unit(rng.random((10, 2)))[:, 0], 5.0)
    x = np.column_stack([np.full(50, 1 / 3), rng.normal(size=50)]).astype(np.float32)
    sc = MinMaxScaler.fit(x)
    u = sc.to_unit(x)
    np.testing.assert_array_equal(u[:, 0], 0)
    back = sc.from_unit(u)
    assert back[:, 0].astype(np.float32).tobytes() == x[:, 0].tobytes()
    np.testing.assert_allclose(back[:, 1], x[:, 1], rtol=1e-6)
    unit = WindowSet.from_series(data.Series(x, ["c", "v"]), 24, sc).gather([0, 5])
    np.testing.assert_array_equal(sc.from_unit(unit)[..., 0], np.float64(np.float32(1 / 3)))


def test_mostly_numeric_column_with_a_bad_cell_is_an_error(tmp_path):
    p = write_csv(tmp_path / "m.csv", "date,a,b,c\nd1,1,2,3\nd2,4,n/a?,6\nd3,7,8,x\n"
                                      "d4,9,oops,11\nd5,1,2,3\n")
    with pytest.raises(DataError) as e, pytest.warns(UserWarning, match="date"):
        load_file(p)
    msg = str(e.value)
    assert "'n/a?' at data row 2 (counting from 1 below the header), column 'b'" in msg
    assert "3 non-numeric cell(s)" in msg and "'b' (2 cell(s)" in msg and "'c' (1 cell(s)" in msg
    assert "--non-numeric drop" in msg
    with pytest.warns(UserWarning) as warned:
        s = load_file(p, non_numeric="drop")
    assert [str(w.message).split(": ", 1)[1][:40] for w in warned] == [
        "dropped non-numeric column(s): date", "dropped column(s) with non-numeric cells"]
    assert "'b' (2 cell(s), first 'n/a?' at data row 2); 'c'" in str(warned[1].message)
    assert s.columns == ["a"]
    np.testing.assert_array_equal(s.values[:, 0], [1, 4, 7, 9, 1])
    with pytest.raises(ValueError, match="non_numeric policy"):
        load_file(p, non_numeric="ignore")


def test_parquet_text_cells_in_a_numeric_column(tmp_path):
    pd.DataFrame({"a": ["1.5", "2", "bad", "4"], "b": [1.0, 2, 3, 4]}).to_parquet(
        tmp_path / "p.parquet")
    with pytest.raises(DataError, match="'bad' at data row 3 \\(counting from 1\\), column 'a'"):
        load_file(tmp_path / "p.parquet")
    with pytest.warns(UserWarning, match="'a'"):
        assert load_file(tmp_path / "p.parquet", non_numeric="drop").columns == ["b"]


def test_headerless_numeric_csv_needs_no_header(tmp_path):
    p = write_csv(tmp_path / "h.csv", "1.5,2,-3e2\n4,5,6\n7,8,9\n")
    with pytest.raises(DataError, match="first row looks like data.*--no-header"):
        load_file(p)
    with pytest.raises(DataError, match="first row looks like data"):
        load_any(str(p))
    s = load_any(str(p), header=False)
    assert s.columns == ["col0", "col1", "col2"]
    np.testing.assert_array_equal(s.values, [[1.5, 2, -300], [4, 5, 6], [7, 8, 9]])
    named = write_csv(tmp_path / "n.csv", "x,y\n1,2\n3,4\n")
    with pytest.raises(DataError, match="first row looks like a header: remove --no-header"):
        load_file(named, header=False)
    with pytest.raises(DataError, match="--no-header"):
        load_any("stocks", header=False)


def test_unreadable_inputs_are_data_errors(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(DataError, match="is a folder"):
        load_file(tmp_path / "adir")
    (tmp_path / "latin.csv").write_bytes("a,b\n1,2\n\xe9,5\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        load_file(tmp_path / "latin.csv")
    np.save(tmp_path / "full.npy", np.zeros((300, 3)))
    cut = (tmp_path / "full.npy").read_bytes()[:3000]
    bad_header = b"\x93NUMPY\x01\x00\x10\x00{'descr': 'garbage"
    for name, raw in (("hdr.npy", bad_header), ("cut.npy", cut)):
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(DataError, match="not a readable .npy array"):
            load_file(tmp_path / name)
