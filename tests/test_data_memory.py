"""Peak memory of the training data path: O(series), not O(T x series).

Each measurement runs in a fresh interpreter: its peak resident set (VmHWM) at the end minus
its resident set after the imports (VmRSS) is the preparation's own peak; the imports' own
high-water mark could only make this an overestimate. (Not ru_maxrss: Linux carries the pytest
parent's high-water mark into a forked-and-exec'd child's ru_maxrss, which hides the growth.)
Memory-mapped pages of the .npy file count as resident once read, so the new path's expected
peak is about 2x the raw series (the mapped file + the once-scaled float32 copy) plus a few
32 MiB chunk temporaries."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

T, C = 24, 20
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from timemar_engine.data import MinMaxScaler, WindowSet, load_any, make_windows

    def status(key):  # bytes
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith(key + ":"))

    path, mode, T = sys.argv[1], sys.argv[2], int(sys.argv[3])
    base = status("VmRSS")
    series = load_any(path)
    scaler = MinMaxScaler.for_series(series)
    rng = np.random.default_rng(0)
    if mode == "new":   # the training path: scale once, gather batches by index
        ws = WindowSet.from_series(series, T, scaler)
        for _ in range(5):
            batch = ws.gather(rng.integers(0, len(ws), 256))
    else:               # the old path: all (N, T, C) windows in float64, then a float32 copy
        windows = scaler.to_unit(make_windows(series.values, T)).astype(np.float32)
    print(json.dumps({"increase": status("VmHWM") - base, "memmap": type(series.values).__name__}))
""")


def measure(path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(path), mode, str(T)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_series(path, rows: int) -> int:
    rng = np.random.default_rng(0)
    np.save(path, rng.standard_normal((rows, C), dtype=np.float32).cumsum(axis=0))
    return rows * C * 4


@linux
def test_training_preparation_peak_memory_is_a_small_multiple_of_the_series(tmp_path):
    raw = write_series(tmp_path / "big.npy", 2_000_000)  # 160 MB of float32
    got = measure(tmp_path / "big.npy", "new")
    ratio = got["increase"] / raw
    print(f"new path: peak increase {got['increase'] / 1e6:.0f} MB = {ratio:.2f} x the series")
    assert got["memmap"] == "memmap"
    # The old path needs T * C * (8 + 4) bytes per row (float64 windows + float32 copy; the
    # issue's T*C*20 also counts the model-scale copy): ~11.5 GB here, 72x the series.
    assert ratio < 3.0


@linux
def test_the_measurement_catches_the_old_path(tmp_path):
    """On a small series the old windowing shows its T-fold growth in the same measurement."""
    raw = write_series(tmp_path / "small.npy", 50_000)  # 4 MB of float32
    got = measure(tmp_path / "small.npy", "old")
    ratio = got["increase"] / raw
    print(f"old path: peak increase {got['increase'] / 1e6:.0f} MB = {ratio:.1f} x the series")
    assert ratio > 3 * T  # float64 windows + float32 copy: T * 12 / 4 = 72x in theory


def test_evaluation_real_set_is_bounded_and_evenly_spaced(monkeypatch, rng):
    from timemar_engine import evaluation
    from timemar_engine.data import Series

    values = rng.normal(size=(5000, 3))
    series = Series(values, ["a", "b", "c"], "t")
    full, sc = evaluation._unit_windows(series, 24)
    assert full.shape == (5000 - 23, 24, 3) and full.dtype == np.float64
    monkeypatch.setattr(evaluation, "MAX_REAL_WINDOWS", 100)
    capped, sc2 = evaluation._unit_windows(series, 24)
    idx = np.linspace(0, len(full) - 1, 100).round().astype(np.int64)
    assert capped.shape == (100, 24, 3)
    np.testing.assert_array_equal(capped, full[idx])
    np.testing.assert_array_equal(sc.lo, sc2.lo)
