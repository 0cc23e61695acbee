"""Safe writes: permissions, fsync, no-clobber at publish time, cleanup, early output checks."""
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config
from timemar_engine.checkpoint import read_checkpoint, save_checkpoint
from timemar_engine.cli import main
from timemar_engine.data import MinMaxScaler
from timemar_engine.evaluation import write_json
from timemar_engine.model import TimeMAR
from timemar_engine.safe_io import (OutputError, Terminated, atomic_output, check_writable,
                                    install_termination_handler)
from timemar_engine.writers import write_chunks

SHAPE = (10, 24, 3)
CHANNELS = ["a", "b", "c"]


def chunks_of(data: np.ndarray, size: int = 4, after_first=None):
    """Yield data in chunks; call after_first() once the first chunk has been consumed."""
    for i in range(0, len(data), size):
        yield data[i:i + size]
        if i == 0 and after_first is not None:
            after_first()


def read_back(path: Path, fmt: str) -> np.ndarray:
    if fmt == "npy":
        return np.load(path)
    df = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    assert list(df.columns) == ["window", "step", *CHANNELS]
    return df[CHANNELS].to_numpy(np.float32).reshape(-1, SHAPE[1], SHAPE[2])


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def data(rng):
    return rng.normal(size=SHAPE).astype(np.float32)


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.fixture
def sigterm_restored():
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


def tiny_model_and_scaler(rng):
    return TimeMAR(tiny_config()), MinMaxScaler(rng.normal(size=3), rng.normal(size=3) + 5)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- permissions follow the umask

@pytest.mark.parametrize("fmt", ["npy", "csv", "parquet"])
def test_sample_files_get_umask_permissions(tmp_path, data, umask, fmt):
    out = write_chunks(tmp_path / f"s.{fmt}", fmt, SHAPE, chunks_of(data), CHANNELS)
    assert mode(out) == 0o666 & ~umask
    np.testing.assert_allclose(read_back(out, fmt), data, rtol=1e-6)
    assert listing(tmp_path) == [out.name]


def test_checkpoint_json_and_plots_get_umask_permissions(tmp_path, rng, umask):
    model, scaler = tiny_model_and_scaler(rng)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model, scaler, CHANNELS, {"seed": int(rng.integers(1 << 30))})
    assert mode(ckpt) == 0o666 & ~umask
    save_checkpoint(ckpt, model, scaler, CHANNELS, {"again": True})  # periodic save: overwrite
    assert mode(ckpt) == 0o666 & ~umask and read_checkpoint(ckpt)["meta"] == {"again": True}
    result = {"score": float(rng.normal())}
    write_json(result, tmp_path / "e.json")
    assert mode(tmp_path / "e.json") == 0o666 & ~umask
    assert json.loads((tmp_path / "e.json").read_text()) == result
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    from timemar_engine.plots import plot_evaluation

    real, fake = rng.uniform(size=(2, 20, 12, 2))
    paths = plot_evaluation(real, fake, tmp_path / "p.png", max_points=20, tsne_iter=250)
    assert len(paths) == 2
    for p in paths:
        assert mode(p) == 0o666 & ~umask and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert listing(tmp_path) == ["e.json", "m.pt", "p.png", "p_channels.png"]


# ---------------------------------------------------------------- fsync of file and folder

def test_file_then_folder_are_fsynced_before_and_after_publish(tmp_path, data, rng, monkeypatch):
    real_fsync, calls = os.fsync, []

    def recording_fsync(fd):
        st = os.fstat(fd)
        calls.append((st.st_ino, stat.S_ISDIR(st.st_mode), set(os.listdir(tmp_path))))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    model, scaler = tiny_model_and_scaler(rng)
    writers = {"s.npy": lambda p: write_chunks(p, "npy", SHAPE, chunks_of(data), CHANNELS),
               "s.csv": lambda p: write_chunks(p, "csv", SHAPE, chunks_of(data), CHANNELS),
               "m.pt": lambda p: save_checkpoint(p, model, scaler, CHANNELS, {}),
               "e.json": lambda p: write_json({"x": 1}, p)}
    folder_ino = tmp_path.stat().st_ino
    for name, write in writers.items():
        calls.clear()
        write(tmp_path / name)
        ino = (tmp_path / name).stat().st_ino
        file_calls = [i for i, c in enumerate(calls) if c[0] == ino and not c[1]]
        dir_calls = [i for i, c in enumerate(calls) if c[0] == folder_ino and c[1]]
        assert file_calls and dir_calls, (name, calls)
        # the data were synced under the temp name, before the final name existed ...
        assert name not in calls[file_calls[0]][2]
        assert any(n.startswith(f".{name}.") and n.endswith(".tmp") for n in calls[file_calls[0]][2])
        # ... and the folder after the rename
        assert file_calls[0] < dir_calls[-1] and name in calls[dir_calls[-1]][2]


# ---------------------------------------------------------------- real no-clobber

@pytest.fixture(params=["hard link", "no hard links"])
def link_mode(request, monkeypatch):
    if request.param == "no hard links":
        def no_link(*a, **k):
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    return request.param


@pytest.mark.parametrize("fmt", ["npy", "csv"])
def test_file_created_during_sampling_is_not_replaced(tmp_path, data, fmt, link_mode):
    out = tmp_path / f"s.{fmt}"
    intruder = os.urandom(1000)
    with pytest.raises(FileExistsError, match="exists; pass --force"):
        write_chunks(out, fmt, SHAPE, chunks_of(data, after_first=lambda: out.write_bytes(intruder)),
                     CHANNELS)
    assert out.read_bytes() == intruder and listing(tmp_path) == [out.name]
    # with overwrite the same situation replaces it (so the test above can tell the difference)
    write_chunks(out, fmt, SHAPE, chunks_of(data, after_first=lambda: out.write_bytes(intruder)),
                 CHANNELS, overwrite=True)
    np.testing.assert_allclose(read_back(out, fmt), data, rtol=1e-6)
    assert listing(tmp_path) == [out.name]


def test_atomic_output_without_hard_links_still_publishes(tmp_path, rng, link_mode):
    payload = rng.bytes(5000)
    with atomic_output(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(payload)
    assert (tmp_path / "x.bin").read_bytes() == payload and listing(tmp_path) == ["x.bin"]
    with pytest.raises(FileExistsError):
        with atomic_output(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"other")
    assert (tmp_path / "x.bin").read_bytes() == payload and listing(tmp_path) == ["x.bin"]


def test_write_json_no_clobber_and_overwrite(tmp_path, rng):
    path = tmp_path / "e.json"
    first, second = {"v": float(rng.normal())}, {"v": float(rng.normal())}
    write_json(first, path)
    with pytest.raises(FileExistsError, match="pass --force"):
        write_json(second, path)
    assert json.loads(path.read_text()) == first
    write_json(second, path, overwrite=True)
    assert json.loads(path.read_text()) == second and listing(tmp_path) == ["e.json"]


# ---------------------------------------------------------------- cleanup on errors and signals

@pytest.mark.parametrize("fmt", ["npy", "csv", "parquet"])
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt, Terminated])
def test_temp_removed_when_sampling_fails(tmp_path, data, fmt, exc):
    def failing():
        yield data[:4]
        assert any(n.endswith(".tmp") for n in os.listdir(tmp_path))  # a temp file is in use
        raise exc("stop")

    with pytest.raises(exc):
        write_chunks(tmp_path / f"s.{fmt}", fmt, SHAPE, failing(), CHANNELS)
    assert listing(tmp_path) == []


def test_real_sigterm_in_process_cleans_up(tmp_path, data, sigterm_restored):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert install_termination_handler() and install_termination_handler()  # idempotent

    def killed():
        yield data[:4]
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        yield data[4:]

    t0 = time.perf_counter()
    with pytest.raises(Terminated):
        write_chunks(tmp_path / "s.npy", "npy", SHAPE, killed(), CHANNELS)
    assert time.perf_counter() - t0 < 4 and listing(tmp_path) == []


def test_interrupt_during_fsync_leaves_nothing(tmp_path, rng, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    model, scaler = tiny_model_and_scaler(rng)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "m.pt", model, scaler, CHANNELS, {})
    with pytest.raises(KeyboardInterrupt):
        write_json({"x": float(rng.normal())}, tmp_path / "e.json")
    assert listing(tmp_path) == []


def test_termination_handler_respects_others(sigterm_restored):
    def theirs(signum, frame):
        pass

    signal.signal(signal.SIGTERM, theirs)
    assert install_termination_handler() is False
    assert signal.getsignal(signal.SIGTERM) is theirs
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    result = []
    worker = threading.Thread(target=lambda: result.append(install_termination_handler()))
    worker.start()
    worker.join()
    assert result == [False] and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert install_termination_handler() is True
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL


# ---------------------------------------------------------------- killed command lines

def wait_for(predicate, proc, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"exited early with {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail("timed out waiting for the command to get going")


def start(args, cwd):
    def default_signals():  # a background shell may have left SIGINT ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return subprocess.Popen([sys.executable, "-m", "timemar_engine", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_signals)


def stop(proc, sig) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("sig,rc,word", [(signal.SIGTERM, 143, "terminated"),
                                         (signal.SIGINT, 130, "interrupted")])
def test_killed_sample_leaves_no_file(tmp_path, sig, rc, word):
    out = tmp_path / "out"
    out.mkdir()
    proc = start(["sample", "--n", "200000", "--out", str(out / "big.npy"), "--quiet"], tmp_path)
    try:
        def temp_in_use():  # the real temp file (the early write probe is empty)
            return any(p.name.startswith(".big.npy.") and p.name.endswith(".tmp")
                       and size(p) > 0 for p in out.iterdir())

        def size(path):  # the write probe may vanish between the listing and the stat
            try:
                return path.stat().st_size
            except FileNotFoundError:
                return 0

        wait_for(temp_in_use, proc)
        code, err = stop(proc, sig)
    finally:
        proc.kill()
        proc.wait()
    assert code == rc, err
    assert err.strip().splitlines() == [err.strip()] and word in err and "Traceback" not in err
    assert listing(out) == []


def sigterm_caught(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(ln for ln in status.splitlines() if ln.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_killed_evaluate_leaves_no_json(tmp_path, rng):
    for name in ("r.npy", "f.npy"):
        np.save(tmp_path / name, rng.uniform(size=(64, 12, 2)).astype(np.float32))
    proc = start(["evaluate", "--real", "r.npy", "--fake", "f.npy", "--metrics", "discriminative",
                  "--iterations", "discriminative=10000000", "--repeats", "1", "--json",
                  "e.json", "--quiet"], tmp_path)
    try:
        wait_for(lambda: sigterm_caught(proc.pid), proc)
        time.sleep(3)  # into the computation
        code, err = stop(proc, signal.SIGTERM)
    finally:
        proc.kill()
        proc.wait()
    assert code == 143, err
    assert err.strip() == "terminated (SIGTERM)"
    assert listing(tmp_path) == ["f.npy", "r.npy"]


def test_evaluate_json_checked_before_the_work(tmp_path, rng, capsys, monkeypatch):
    import timemar_engine.evaluation as evaluation

    for name in ("r.npy", "f.npy"):
        np.save(tmp_path / name, rng.uniform(size=(40, 8, 2)).astype(np.float32))
    args = ["evaluate", "--real", str(tmp_path / "r.npy"), "--fake", str(tmp_path / "f.npy"),
            "--metrics", "correlational", "--repeats", "2", "--quiet", "--json"]
    old = os.urandom(64)
    (tmp_path / "e.json").write_bytes(old)
    real_score = evaluation.score_windows

    def must_not_run(*a, **k):
        raise AssertionError("the metrics ran before the output was checked")

    monkeypatch.setattr(evaluation, "score_windows", must_not_run)
    assert main([*args, str(tmp_path / "e.json")]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main([*args, str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert (tmp_path / "e.json").read_bytes() == old
    monkeypatch.setattr(evaluation, "score_windows", real_score)
    assert main([*args, str(tmp_path / "e.json"), "--force"]) == 0
    assert "correlational" in json.loads((tmp_path / "e.json").read_text())["metrics"]
    assert listing(tmp_path) == ["e.json", "f.npy", "r.npy"]


# ---------------------------------------------------------------- early, clear output errors

def test_check_writable(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a folder"):
        check_writable(tmp_path)
    with pytest.raises(OutputError, match="file is a file, not a folder"):
        check_writable(tmp_path / "file" / "deeper" / "x.npy")
    with pytest.raises(FileExistsError, match="exists; pass --force"):
        check_writable(tmp_path / "file")
    assert check_writable(tmp_path / "file", overwrite=True) == tmp_path / "file"
    assert check_writable(tmp_path / "new" / "sub" / "x.npy") == tmp_path / "new" / "sub" / "x.npy"
    assert (tmp_path / "new" / "sub").is_dir() and listing(tmp_path / "new" / "sub") == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_check_writable_unwritable_even_for_root():
    with pytest.raises(OutputError, match="cannot create files in /proc/self"):
        check_writable("/proc/self/samples.npy")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root ignores permissions")
def test_check_writable_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="cannot create files in"):
            check_writable(ro / "x.npy")
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("fmt,channels,match", [
    ("csv", ["a", "step", "c"], "channel 'step'"),
    ("parquet", ["window", "b", "c"], "channel 'window'"),
    ("csv", ["a", "a", "c"], "repeat"),
])
def test_bad_channel_names_refused_before_sampling(tmp_path, data, fmt, channels, match):
    pulled = []

    def chunks():
        pulled.append(1)
        yield data

    with pytest.raises(OutputError, match=match):
        write_chunks(tmp_path / f"s.{fmt}", fmt, SHAPE, chunks(), channels)
    assert pulled == [] and listing(tmp_path) == []
    write_chunks(tmp_path / "s.npy", "npy", SHAPE, chunks(), channels)  # npy has no columns
    assert np.array_equal(np.load(tmp_path / "s.npy"), data)


def test_cli_output_errors_come_before_sampling(tmp_path, rng, capsys, monkeypatch):
    from timemar_engine.engine import Engine

    model, scaler = tiny_model_and_scaler(rng)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model, scaler, ["step", "b", "c"], {})
    good = tmp_path / "good.pt"
    save_checkpoint(good, model, scaler, CHANNELS, {})
    sampled = []

    def no_sampling(self, *a, **k):
        sampled.append(1)
        yield np.zeros((1, 24, 3), np.float32)

    monkeypatch.setattr(Engine, "iter_batches", no_sampling)
    (tmp_path / "d").mkdir()
    cases = [(ckpt, ["--out", str(tmp_path / "s.csv")], "channel 'step'"),
             (ckpt, ["--out", str(tmp_path / "d"), "--force"], "is a folder"),
             (ckpt, ["--out", str(ckpt / "s.npy")], "is a file, not a folder")]
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    cases.append((good, ["--out", str(tmp_path / "s.parquet")],
                  "pip install 'timemar-engine[parquet]'"))
    for path, extra, match in cases:
        assert main(["sample", "--ckpt", str(path), "--n", "5", "--quiet", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and match in err and len(err.splitlines()) == 1, err
    assert sampled == [] and listing(tmp_path) == ["d", "good.pt", "m.pt"]
    assert listing(tmp_path / "d") == []


def test_cli_reports_os_errors_in_one_line(tmp_path, rng, capsys, monkeypatch):
    import timemar_engine.writers as writers

    model, scaler = tiny_model_and_scaler(rng)
    save_checkpoint(tmp_path / "m.pt", model, scaler, CHANNELS, {})
    monkeypatch.setattr(writers, "check_output", lambda *a: None)  # fail only at write time
    (tmp_path / "d").mkdir()
    assert main(["sample", "--ckpt", str(tmp_path / "m.pt"), "--n", "3", "--quiet",
                 "--out", str(tmp_path / "d"), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert listing(tmp_path / "d") == [] and listing(tmp_path) == ["d", "m.pt"]
