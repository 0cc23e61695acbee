"""Data-parallel training under torchrun (gloo, 2 CPU processes)."""
import os
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import REPO
from timemar_engine import Engine

TINY = ["--preset", "xs", "--set", "hidden=16", "--set", "code_dim=8", "--set", "d_model=32",
        "--set", "n_layer=1", "--set", "n_head=2", "--set", "attn_heads=2", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(*args, nproc=2, **kw):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                           str(nproc), *args], env=ENV, capture_output=True, text=True,
                          timeout=300, **kw)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "timemar_engine", *args], env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def walk_csv(tmp_path, rng):
    path = tmp_path / "walk.csv"
    np.savetxt(path, np.cumsum(rng.normal(size=(600, 3)), axis=0), delimiter=",",
               header="a,b,c", comments="")
    return path


def test_two_ranks_train_both_stages(walk_csv, tmp_path):
    """Both stages on 2 ranks with a dead-code restart: the run's own check that every rank ends
    each stage with bit-identical weights passes, the loss falls, and one process samples it."""
    out = tmp_path / "m.pt"
    r = torchrun("-m", "timemar_engine", "train", "--data", str(walk_csv), *TINY, "--set",
                 "codebook_size=256", "--steps1", "150", "--steps2", "30", "--batch-size", "32",
                 "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("saved") == 1  # rank 0 alone writes and prints
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["stage1"]["codes_revived"] > 0 and meta["stage2"]["steps"] == 30
    loss = [h["loss"] for h in meta["history"]["stage1"]]
    assert loss[-1] < 0.5 * loss[0], loss
    x = Engine.load(out, device="cpu").sample(7, seed=0)
    assert x.shape == (7, 24, 3) and np.isfinite(x).all()


def test_stage_two_on_two_ranks_matches_one_process(walk_csv, tmp_path):
    """From the same stage-1 checkpoint, stage 2 with global batch 32 on 2 ranks follows the
    1-process run with batch 32 (same batches, averaged gradients) up to fp32 rounding (pinned:
    `auto` is bf16 on CPUs with native bf16); a 1-process checkpoint resumes in a world of 2."""
    flags = ["--data", str(walk_csv), *TINY, "--steps1", "40", "--steps2", "30",
             "--batch-size", "32", "--precision", "fp32", "--quiet"]
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    assert cli("train", *flags, "--stage", "1", "--out", str(one)).returncode == 0
    two.write_bytes(one.read_bytes())
    r = cli("train", *flags, "--stage", "2", "--resume", str(one), "--out", str(one))
    assert r.returncode == 0, r.stderr
    r = torchrun("-m", "timemar_engine", "train", *flags, "--stage", "2", "--resume", str(two),
                 "--out", str(two))
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = (torch.load(p, weights_only=True) for p in (one, two))
    for k in a["gpt"]:
        torch.testing.assert_close(a["gpt"][k], b["gpt"][k], atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(a["meta"]["stage2"]["ce_per_scale"],
                               b["meta"]["stage2"]["ce_per_scale"], atol=1e-3)


def test_interrupted_two_rank_run_resumes_in_one_process(walk_csv, tmp_path):
    out = tmp_path / "m.pt"
    flags = ["--data", str(walk_csv), *TINY, "--steps1", "400", "--steps2", "20",
             "--batch-size", "32", "--out", str(out)]
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "-m", "timemar_engine", "train", *flags], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        while not re.search(r"\| *[1-9]\d*/400", seen):  # rank 0's stage-1 bar has moved
            c = p.stderr.read(1)
            assert c, seen
            seen += c
        p.send_signal(signal.SIGINT)  # torchrun passes it on to both ranks
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode != 0
    assert err.count("resumable checkpoint") == 1, err[-2000:]
    state = torch.load(out, weights_only=True)["train_state"]
    assert state["stage"] == 1 and 0 < state["step"] < 400
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]
    r = cli("train", *flags, "--resume", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert torch.load(out, weights_only=True)["meta"]["stage1"]["steps"] == 400


def test_rank_agreement_check_catches_a_difference(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(textwrap.dedent("""
        import torch, torch.distributed as dist
        from timemar_engine.ddp import Ranks
        dist.init_process_group("gloo")
        ranks = Ranks(dist.get_rank(), dist.get_world_size())
        torch.manual_seed(0)
        m = torch.nn.Linear(4, 3)
        ranks.check_same(m, "same")
        with torch.no_grad():
            m.weight[1, 2] += 1e-6 * (ranks.rank == 1)
        try:
            ranks.check_same(m, "perturbed")
        except RuntimeError as e:
            print("caught:", e)
        dist.destroy_process_group()
    """))
    r = torchrun(str(script))
    assert r.returncode == 0, r.stderr[-2000:]
    # both ranks raise (their lines may interleave on the shared stdout)
    assert r.stdout.count("caught:") == 2
    assert r.stdout.count("perturbed: ranks [1] hold different weights than rank 0") == 2


def test_global_batch_must_split_evenly(walk_csv, tmp_path):
    r = torchrun("-m", "timemar_engine", "train", "--data", str(walk_csv), *TINY,
                 "--batch-size", "33", "--out", str(tmp_path / "m.pt"))
    assert r.returncode != 0 and "must be a multiple of the 2 processes" in r.stderr
    assert not (tmp_path / "m.pt").exists()


def readme_train_commands() -> list[str]:
    """The bash lines of the README's data-parallel section that run torchrun to train."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Data-parallel training", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line for b in blocks for line in b.splitlines() if "torchrun" in line]


@pytest.mark.parametrize("nodes", [1, 2])
def test_readme_train_commands_run_as_written(nodes, tmp_path, datasets_dir):
    """The README's single-node and multi-node lines, with a tiny model and a few steps appended
    (the later flags win), the data folder of this machine and, for two nodes, two local agents
    on a free port. Rank 0 alone saves; the checkpoint samples in one process."""
    from test_distributed import free_port, run
    lines = [c for c in readme_train_commands() if ("--nnodes" in c) == (nodes == 2)]
    assert len(lines) == 1 and "--data-dir ../shared/datasets" in lines[0], lines
    cmd = lines[0].replace("--data-dir ../shared/datasets", f"--data-dir {datasets_dir}")
    cmd += " " + " ".join(TINY) + " --steps1 30 --steps2 10 --quiet"
    if nodes == 2:
        assert "HOST:29500" in cmd
        cmd = cmd.replace("HOST:29500", f"127.0.0.1:{free_port()}")
        cmd = f"{cmd} & {cmd}; s=$?; wait $!; exit $(( s + $? ))"
    r = run(cmd, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("saved") == 1, r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.pt"]
    meta = torch.load(tmp_path / "ddp.pt", weights_only=True)["meta"]
    assert meta["stage1"]["steps"] == 30 and meta["stage2"]["steps"] == 10
    x = Engine.load(tmp_path / "ddp.pt", device="cpu").sample(5, seed=0)
    assert x.shape == (5, 24, 6) and np.isfinite(x).all()
