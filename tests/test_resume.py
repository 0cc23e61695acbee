"""Interrupt-and-resume equals an uninterrupted run, bit for bit on CPU; schedules adapt."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from timemar_engine import train
from timemar_engine.config import DEFAULT_STEPS, TrainConfig
from timemar_engine.schedule import EpochOrder, StepBudget

TINY = {"hidden": 16, "code_dim": 8, "codebook_size": 256, "d_model": 32, "n_layer": 1,
        "n_head": 2, "attn_heads": 2}
STEPS = {"steps1": 150, "steps2": 40, "batch_size": 16, "seed": 3}


@pytest.fixture
def walk(rng):
    return np.cumsum(rng.normal(size=(240, 3)), axis=0)


def weights(path) -> dict:
    obj = torch.load(path, weights_only=True)
    return {f"{part}.{k}": v for part in ("vqvae", "gpt") for k, v in obj[part].items()}


def run(data, out, **kw):
    return train(data, out=out, preset="xs", overrides=TINY, progress=False, device="cpu",
                 **STEPS, **kw)


def stop_at(stage: int, step: int):
    return lambda s, k, logs: (s, k) == (stage, step)


def test_interrupted_runs_continue_exactly(walk, tmp_path):
    """Stopped in stage 1 right before a dead-code restart (its usage counts and residuals must
    survive) and again in stage 2; each resume starts from a scrambled global RNG."""
    full = run(walk, tmp_path / "full.pt")
    assert full.meta["stage1"]["codes_revived"] > 0  # the restart at step 100 happened

    part = tmp_path / "part.pt"
    e = run(walk, part, on_step=stop_at(1, 100))
    assert e.stopped_at == (1, 100)
    state = torch.load(part, weights_only=True)["train_state"]
    assert state["stage"] == 1 and state["step"] == 100
    torch.manual_seed(12345)
    e = train(walk, out=part, resume=part, progress=False, device="cpu",
              on_step=stop_at(2, 9))
    assert e.stopped_at == (2, 9)
    torch.manual_seed(999)
    e = train(walk, out=part, resume=part, progress=False, device="cpu")
    assert e.stopped_at is None

    a, b = weights(tmp_path / "full.pt"), weights(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = full.meta, torch.load(part, weights_only=True)["meta"]
    for key in ("steps", "codes_revived", "recon_mse", "perplexity"):
        assert ma["stage1"][key] == mb["stage1"][key], key
    assert ma["stage2"] == mb["stage2"]
    assert mb["train_minutes"] > 0 and "train_state" not in torch.load(part, weights_only=True)


def test_resume_restores_flags_and_refuses_conflicts(walk, tmp_path):
    part = tmp_path / "p.pt"
    run(walk, part, on_step=stop_at(1, 20))
    with pytest.raises(ValueError, match="batch_size=16.*conflicts"):
        train(walk, out=part, resume=part, batch_size=32, progress=False)
    with pytest.raises(ValueError, match="hidden=16.*conflicts"):
        train(walk, out=part, resume=part, overrides={"hidden": 64}, progress=False)
    with pytest.raises(ValueError, match="preset 'xs', not 's'"):
        train(walk, out=part, resume=part, preset="s", progress=False)
    with pytest.raises(ValueError, match="stage 1 is not complete"):
        train(walk, out=part, resume=part, stage="2", progress=False)
    with pytest.raises(ValueError, match="240|windows"):
        train(walk[:200], out=part, resume=part, progress=False)
    # the same flags again are fine: the stored ones are used
    e = train(walk, out=part, resume=part, batch_size=16, progress=False, stage="1")
    assert e.meta["stage1"]["steps"] == 150


def test_stage_two_settings_may_change_at_the_boundary(walk, tmp_path):
    one = tmp_path / "one.pt"
    run(walk, one, stage="1")
    assert torch.load(one, weights_only=True)["train_state"]["stage"] == 2
    e = train(walk, out=one, resume=one, stage="2", steps2=12, progress=False)
    assert e.meta["stage2"]["steps"] == 12 and e.meta["train_config"]["stage2_steps"] == 12


def _default_sigint() -> None:
    # a test runner started in the background (nohup, `&`) passes SIGINT on ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "timemar_engine", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint, **kw)


def test_deferred_signals_keeps_an_ignored_signal_ignored():
    from timemar_engine.training import deferred_signals

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_signals() as got:
            os.kill(os.getpid(), signal.SIGINT)  # ignored: no stop requested
            assert got == [] and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)  # handled: deferred to the loop's check
            time.sleep(0.01)
            assert got == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_train_leaves_a_resumable_checkpoint(walk, tmp_path, sig):
    """A run signalled mid-stage-1 writes a consistent checkpoint (no temp file left), and
    resuming it gives the uninterrupted run's weights bit for bit."""
    csv = tmp_path / "walk.csv"
    np.savetxt(csv, walk, delimiter=",", header="a,b,c", comments="")
    flags = ["--data", str(csv), "--preset", "xs", "--steps1", "600", "--steps2", "30",
             "--batch-size", "16", "--device", "cpu", "--seed", "1",
             *[f"--set={k}={v}" for k, v in TINY.items()]]
    full = _cli("train", *flags, "--out", str(tmp_path / "full.pt"), "--quiet")
    part = tmp_path / "part.pt"
    p = _cli("train", *flags, "--out", str(part))
    try:
        seen = ""
        while not re.search(r"\| *[1-9]\d*/600", seen):  # the stage-1 bar has moved
            c = p.stderr.read(1)
            assert c, seen
            seen += c
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode != 0 and "Traceback" not in err, err
    assert "resumable checkpoint" in err
    assert sorted(f.name for f in tmp_path.iterdir() if f.name.startswith(".")) == []
    state = torch.load(part, weights_only=True)["train_state"]
    assert state["stage"] == 1 and 0 < state["step"] < 600
    r = _cli("train", *flags, "--out", str(part), "--resume", str(part), "--quiet")
    assert r.wait(timeout=300) == 0, r.stderr.read()
    assert full.wait(timeout=300) == 0, full.stderr.read()
    a, b = weights(tmp_path / "full.pt"), weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_warmup_adapts_to_a_short_budget():
    b = StepBudget(300, warmup=200, seconds=None)
    assert b.warmup == 30  # a tenth of the run, not 200 of its 300 steps
    assert b.lr_factor(29) == pytest.approx(1.0) and b.lr_factor(299) == pytest.approx(0.1, abs=1e-4)
    assert StepBudget(10_000, warmup=200, seconds=None).warmup == 200
    s = StepBudget(300, warmup=200, seconds=50.0, state={"total": 120, "seconds": 50.0,
                                                          "elapsed": 20.0})
    assert s.total == 120 and s.warmup == 12 and 20.0 <= s.elapsed() < 21.0


def test_open_ended_stage_runs_as_many_steps_as_fit(monkeypatch):
    from timemar_engine import schedule

    clock = [0.0]
    monkeypatch.setattr(schedule.time, "perf_counter", lambda: clock[0])
    open_ended, capped = StepBudget(None, warmup=10, seconds=100.0), StepBudget(300, 10, 100.0)
    assert open_ended.total == 100 and open_ended.warmup == 10  # full warm-up until timed
    for step in range(1, 301):
        clock[0] += 0.05  # 2000 steps fit in 100 s
        open_ended.observe(step, 0)
        capped.observe(step, 0)
    assert 1990 <= open_ended.total <= 2000 and capped.total == 300
    assert open_ended.lr_factor(open_ended.total) == pytest.approx(0.1)
    assert StepBudget(None, warmup=0, seconds=100.0).total > 20  # reaches its first timing
    with pytest.raises(ValueError, match="needs a time budget"):
        StepBudget(None, warmup=10, seconds=None)


def test_step_counts_default_to_the_time_budget():
    assert TrainConfig().steps(1) == TrainConfig().steps(2) == DEFAULT_STEPS == 3000
    t = TrainConfig(max_minutes=5.0, stage2_steps=40)
    assert t.steps(1) is None and t.steps(2) == 40


def test_a_budget_without_step_counts_is_spent(walk, tmp_path):
    budget = 0.2  # minutes: stage 1 gets 40% of it (far more than 5 steps need, even on busy
    # cores: a 0.05 budget let stage 1 end after 1 step while other work shared the CPU), stage 2
    # the rest
    t0 = time.perf_counter()
    e = train(walk, out=tmp_path / "b.pt", preset="xs", overrides=TINY, progress=False,
              device="cpu", batch_size=16, seed=3, max_minutes=budget, steps1=5)
    took = time.perf_counter() - t0
    assert e.meta["stage1"]["steps"] == 5  # a given count still caps its stage
    assert e.meta["train_config"]["stage2_steps"] is None and e.meta["stage2"]["steps"] > 20
    assert took >= 0.6 * budget * 60  # stage 2 trained until its share was spent


def test_epoch_order_state_replays_the_same_batches():
    a = EpochOrder(37, 8, seed=5, stream=1)
    first = [a.next() for _ in range(7)]
    b = EpochOrder(37, 8, seed=5, stream=1, state=a.state_dict())
    assert all(torch.equal(a.next(), b.next()) for _ in range(20))
    seen = torch.cat(first[:4])  # one epoch: 4 batches of 8 out of 37, no repeats
    assert len(set(seen.tolist())) == 32
    assert not torch.equal(EpochOrder(37, 8, seed=6, stream=1).next(), first[0])


def test_first_checkpoint_never_replaces_a_file_that_appeared_meanwhile(walk, tmp_path):
    out = tmp_path / "m.pt"

    def intrude(stage, step, logs):
        if step == 1:
            out.write_bytes(b"someone else's file")

    with pytest.raises(FileExistsError, match="exists"):
        train(walk, out=out, preset="xs", overrides=TINY, steps1=3, steps2=2, batch_size=16,
              progress=False, on_step=intrude)
    assert out.read_bytes() == b"someone else's file"
    assert [f.name for f in tmp_path.iterdir()] == ["m.pt"]
