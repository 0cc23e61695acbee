"""Sharded sampling: chunked random streams, 1 vs 2 processes (gloo on CPU), failures, and the
README's torchrun command lines run as written (with a small n and a tiny model)."""
import hashlib
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, tiny_config
from timemar_engine.checkpoint import save_checkpoint
from timemar_engine.data import MinMaxScaler
from timemar_engine.distributed import ShardError
from timemar_engine.engine import Engine, chunk_seed
from timemar_engine.model import TimeMAR

N = 1000  # not a multiple of the CPU chunk (256)


@pytest.fixture
def ckpt(tmp_path, rng):
    lo = rng.normal(size=3)
    save_checkpoint(tmp_path / "model.pt", TimeMAR(tiny_config()), MinMaxScaler(lo, lo + 2),
                    ["a", "b", "c"], {})
    return tmp_path / "model.pt"


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: str, cwd, **env) -> subprocess.CompletedProcess:
    """A shell command line, with torchrun meaning this interpreter's torch.distributed.run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_chunk_seed_is_splitmix64():
    assert chunk_seed(0, 0) == 0xE220A8397B1DCDAF  # SplitMix64's first output for state 0
    assert chunk_seed(-1, 3) == chunk_seed(2 ** 64 - 1, 3)  # seeds are taken mod 2**64
    assert len({chunk_seed(s, c) for s in range(4) for c in range(4)}) == 16
    assert all(0 <= chunk_seed(s, c) < 2 ** 64 for s in (-2 ** 63, 2 ** 64 - 1) for c in (0, 9))


@pytest.mark.parametrize("backend", ["engine", "eager"])
def test_batch_size_does_not_change_the_windows(ckpt, backend):
    e = Engine.load(ckpt, device="cpu", backend=backend)
    ref = e.sample(600, batch_size=256, seed=7)
    for b in (1, 100, 600, 5000):
        chunks = list(e.iter_batches(600, batch_size=b, seed=7))
        assert [len(c) for c in chunks[:-1]] == [b] * (len(chunks) - 1)
        np.testing.assert_array_equal(np.concatenate(chunks), ref)
    if backend == "engine":  # its uniforms are drawn row by row: a shorter run is a prefix
        np.testing.assert_array_equal(e.sample(300, seed=7), ref[:300])
    assert not np.array_equal(e.sample(600, seed=8), ref)
    assert not np.array_equal(e.sample(20), e.sample(20))  # seed None: fresh windows


def as_one_rank(monkeypatch) -> None:
    """This process as the only rank of a torchrun job (gloo, world size 1)."""
    for k, v in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def one_rank(monkeypatch):
    as_one_rank(monkeypatch)


def test_distributed_api_in_one_process(ckpt, tmp_path, one_rank, monkeypatch):
    e = Engine.load(ckpt, device="cpu")
    plain = e.sample_to(tmp_path / "plain.npy", N, seed=5, batch_size=300)
    out = e.sample_to(tmp_path / "dist.npy", N, seed=5, distributed=True)
    assert sha(out) == sha(plain)
    assert not torch.distributed.is_initialized()  # the group it set up is torn down
    with pytest.raises(ShardError, match=r"rank 0 failed: .*dist.npy exists; pass --force"):
        e.sample_to(out, N, seed=6, distributed=True)
    e.sample_to(out, 10, seed=6, distributed=True, overwrite=True)
    np.testing.assert_array_equal(np.load(out), e.sample(10, seed=6))
    with pytest.raises(ValueError, match="writes .npy or Parquet only"):
        e.sample_to(tmp_path / "x.csv", N, seed=5, distributed=True)
    monkeypatch.delenv("MASTER_ADDR")
    with pytest.raises(ValueError, match="not launched by torchrun: MASTER_ADDR not set"):
        e.sample_to(tmp_path / "y.npy", N, seed=5, distributed=True)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def readme_commands() -> list[str]:
    """The bash lines of the README's scale-out section that run torchrun to sample."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Scale-out: sharded sampling", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line for b in blocks for line in b.splitlines()
            if "torchrun" in line and " sample " in line]


def small(cmd: str) -> str:
    assert " -n 200000 " in cmd and "--ckpt model.pt" in cmd and "--out big.npy" in cmd
    return cmd.replace(" -n 200000 ", f" -n {N} ")


def test_readme_single_node_command_matches_one_process(ckpt):
    single = [c for c in readme_commands() if "--nnodes" not in c]
    assert len(single) == 1 and "--nproc-per-node 2" in single[0]
    r = run(small(single[0]), ckpt.parent)
    assert r.returncode == 0, r.stderr
    one = Engine.load(ckpt, device="cpu").sample_to(ckpt.parent / "one.npy", N, seed=0,
                                                     batch_size=77)
    assert sha(ckpt.parent / "big.npy") == sha(one)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["big.npy", "model.pt", "one.npy"]


def test_readme_multi_node_command_on_two_local_nodes(ckpt):
    multi = [c for c in readme_commands() if "--nnodes" in c]
    assert len(multi) == 1 and "HOST:29500" in multi[0]
    cmd = small(multi[0]).replace("HOST:29500", f"127.0.0.1:{free_port()}")
    r = run(f"{cmd} & {cmd}; s=$?; wait $!; exit $(( s + $? ))", ckpt.parent)
    assert r.returncode == 0, r.stderr
    one = Engine.load(ckpt, device="cpu").sample_to(ckpt.parent / "one.npy", N, seed=0)
    assert sha(ckpt.parent / "big.npy") == sha(one)


def test_a_failing_rank_fails_the_run_and_leaves_nothing(ckpt):
    cmd = (f"torchrun --nproc-per-node 2 --no-python timemar-engine sample --ckpt model.pt "
           f"-n {N} --out big.npy --seed 0 --quiet")
    r = run(cmd, ckpt.parent, TIMEMAR_FAIL_RANK="1")
    assert r.returncode != 0
    ours = [line for line in r.stderr.splitlines() if "error: " in line]
    assert ours == ["error: rank 1 failed: RuntimeError: failure injected by TIMEMAR_FAIL_RANK=1"]
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.pt"]  # no file, no temp
    r = run(cmd.replace("big.npy", "big.csv"), ckpt.parent)
    assert r.returncode != 0
    ours = [line for line in r.stderr.splitlines() if "error: " in line]
    assert len(ours) == 1 and "error: sharded sampling (under torchrun) writes .npy or Parquet " \
        "only" in ours[0]
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.pt"]


NP = 1300  # 6 CPU chunks, the last one of 20 windows; 3 parts of 2 chunks


def part_hashes(folder) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted(folder.iterdir())}


def test_parquet_dataset_in_one_process(ckpt, tmp_path, one_rank, monkeypatch):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    from timemar_engine import distributed_parquet

    monkeypatch.setattr(distributed_parquet, "PART_CHUNKS", 2)
    e = Engine.load(ckpt, device="cpu")
    out = e.sample_to(tmp_path / "big.parquet", NP, seed=5, distributed=True)
    assert sorted(p.name for p in out.iterdir()) == [f"part-0000{p}.parquet" for p in range(3)]
    plain = e.sample_to(tmp_path / "plain.parquet", NP, seed=5, batch_size=300)
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(plain))
    assert pd.read_parquet(out / "part-00002.parquet")["window"].iloc[[0, -1]].tolist() == [
        1024, NP - 1]
    with pytest.raises(ShardError, match=r"rank 0 failed: .*big.parquet exists; pass --force"):
        e.sample_to(out, 10, seed=6, distributed=True)
    e.sample_to(out, 10, seed=6, distributed=True, overwrite=True)  # replaces the whole folder
    assert [p.name for p in out.iterdir()] == ["part-00000.parquet"]
    np.testing.assert_array_equal(pd.read_parquet(out)["a"].to_numpy(),
                                  e.sample(10, seed=6)[..., 0].ravel())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.parquet", "model.pt",
                                                          "plain.parquet"]  # no temp, no .old


def test_parquet_two_processes_write_the_same_parts_as_one(ckpt, tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    from timemar_engine import distributed_parquet

    cmd = (f"torchrun --nproc-per-node 2 --no-python timemar-engine sample --ckpt model.pt "
           f"-n {NP} --out big.parquet --seed 0 --quiet")
    r = run(cmd, ckpt.parent, TIMEMAR_PARQUET_PART_CHUNKS="2")
    assert r.returncode == 0, r.stderr
    as_one_rank(monkeypatch)
    monkeypatch.setattr(distributed_parquet, "PART_CHUNKS", 2)
    one = Engine.load(ckpt, device="cpu").sample_to(tmp_path / "one.parquet", NP, seed=0,
                                                     distributed=True)
    assert len(part_hashes(one)) == 3
    assert part_hashes(ckpt.parent / "big.parquet") == part_hashes(one)


def test_a_failing_rank_leaves_no_parquet_folder_and_one_is_not_replaced(ckpt):
    pytest.importorskip("pyarrow")
    cmd = (f"torchrun --nproc-per-node 2 --no-python timemar-engine sample --ckpt model.pt "
           f"-n {NP} --out big.parquet --seed 0 --quiet")
    r = run(cmd, ckpt.parent, TIMEMAR_FAIL_RANK="1", TIMEMAR_PARQUET_PART_CHUNKS="2")
    assert r.returncode != 0
    ours = [line for line in r.stderr.splitlines() if "error: " in line]
    assert ours == ["error: rank 1 failed: RuntimeError: failure injected by TIMEMAR_FAIL_RANK=1"]
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.pt"]  # no folder, no temp
    (ckpt.parent / "big.parquet").mkdir()
    (ckpt.parent / "big.parquet" / "mine").write_text("keep")
    r = run(cmd, ckpt.parent)  # exists, no --force: refused before loading the model
    assert r.returncode != 0
    ours = [line for line in r.stderr.splitlines() if "error: " in line]
    assert ours == ["error: big.parquet exists; pass --force to overwrite it"]
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["big.parquet", "model.pt"]
    assert [p.name for p in (ckpt.parent / "big.parquet").iterdir()] == ["mine"]
