"""A sweep of malformed inputs through the CLI (files, flags, configs, checkpoints, outputs).

Every case must end as one clear error: a non-zero exit status, exactly one line on stderr that
names the problem (a case-specific pattern), no traceback and no escaping exception, no warning,
no file or folder left behind and no input file changed (names and sha256 of everything under
tmp_path, before and after). Usage errors from argparse count too: the parser prints them as one
line (`timemar-engine sample: error: argument --n: ... (see timemar-engine sample --help)`).

The table is the spec: a case whose check has not landed yet fails, it is not loosened.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import subprocess
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from conftest import tiny_config
from timemar_engine.checkpoint import save_checkpoint
from timemar_engine.cli import main
from timemar_engine.data import MinMaxScaler
from timemar_engine.model import TimeMAR

TINY = ("--preset xs --set hidden=16 --set code_dim=8 --set codebook_size=32 --set d_model=32 "
        "--set n_layer=1 --set n_head=2 --set attn_heads=2 --quiet")
QUICK = "--steps1 2 --steps2 2 --batch-size 8"
TRAIN = f"train --data {{t}}/walk.csv --out {{t}}/new.pt {QUICK} {TINY}"
SAMPLE = "sample --ckpt {t}/m.pt --n 5 --out {t}/s.npy --quiet"
PAIR = ("evaluate --real {t}/real.npy --fake {t}/fake.npy --metrics correlational --repeats 1 "
        "--quiet")
EVAL = "evaluate --ckpt {t}/m.pt --data {t}/walk.csv --metrics correlational --repeats 1 --quiet"


# --- inputs -----------------------------------------------------------------------------------
def walk_csv(rows: int = 200, columns=("x", "y", "z")) -> str:
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(size=(rows, len(columns))), axis=0)
    body = "\n".join(",".join(f"{v:.6f}" for v in row) for row in walk)
    return ",".join(columns) + "\n" + body + "\n"


def npy_bytes(a: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def mat_bytes(**arrays) -> bytes:
    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, arrays)
    return buf.getvalue()


class Sneaky:
    """Unpickling this creates the file PWNED: a payload the loader must refuse unexecuted."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, bytes]:
    """Tiny checkpoints (T = 24, 3 channels) as bytes: made once, copied into every case."""
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = TimeMAR(tiny_config(n_layer=1)).eval()
    lo = np.array([-3.0, 0.0, 1.0])
    out = {}
    for name, channels, meta in (("m.pt", ["x", "y", "z"], {"dataset": "walk",
                                                            "source": "gone.csv"}),
                                 ("win.pt", ["window", "y", "z"], {}),
                                 ("step.pt", ["x", "step", "z"], {})):
        save_checkpoint(d / name, model, MinMaxScaler(lo, lo + 5), channels, meta)
        out[name] = (d / name).read_bytes()
    return out


def standard_files(models: dict[str, bytes]) -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    return {
        "walk.csv": walk_csv().encode(),
        "m.pt": models["m.pt"], "win.pt": models["win.pt"], "step.pt": models["step.pt"],
        "real.npy": npy_bytes(rng.uniform(size=(64, 24, 3)).astype(np.float32)),
        "fake.npy": npy_bytes(rng.uniform(size=(64, 24, 3)).astype(np.float32)),
        "existing.npy": b"precious, not to be overwritten",
        "existing.json": b'{"precious": true}',
        "afile.txt": b"a regular file, not a folder",
        "adir/keep.txt": b"a folder's content",
    }


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root: 'dir' for folders, the sha256 of a file's bytes otherwise."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "dir" if p.is_dir() and not p.is_symlink() else hashlib.sha256(
            p.read_bytes()).hexdigest()
    return out


# --- the table --------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    argv: str                       # {t} is the case's folder
    expect: str                     # a regex the single stderr line must contain
    files: dict = field(default_factory=dict)  # extra inputs: name -> bytes, or f(t) -> bytes
    patch: Callable | None = None   # patch(monkeypatch) before the run
    skip: str | None = None


def C(id, argv, expect, files=None, patch=None, skip=None) -> Case:
    return Case(id, argv, expect, files or {}, patch, skip)


def no_pyarrow(mp):
    mp.setitem(sys.modules, "pyarrow", None)
    mp.setitem(sys.modules, "pyarrow.parquet", None)


def no_sklearn(mp):
    mp.setitem(sys.modules, "sklearn", None)


def ckpt_dict(models, **changes) -> bytes:
    obj = torch.load(io.BytesIO(models["m.pt"]), weights_only=True)
    obj.update(changes)
    return torch_bytes(obj)


def bad_config(models) -> bytes:
    obj = torch.load(io.BytesIO(models["m.pt"]), weights_only=True)
    obj["config"]["hidden"] = "abc"
    return torch_bytes(obj)


RNG = np.random.default_rng(7)
NO_CUDA7 = "this machine has a cuda:7" if torch.cuda.device_count() > 7 else None
NOT_LINUX = None if sys.platform.startswith("linux") else "needs Linux /sys"

CASES = [
    # train: data files
    C("train-data-missing", TRAIN.replace("walk.csv", "nope.csv"), r"nope\.csv: no such file"),
    C("train-data-folder", TRAIN.replace("walk.csv", "adir"), r"adir.*(folder|directory)"),
    C("train-data-empty", TRAIN.replace("walk.csv", "empty.csv"), r"empty\.csv.*empty",
      {"empty.csv": b""}),
    C("train-data-garbage", TRAIN.replace("walk.csv", "garbage.csv"),
      r"garbage\.csv: .*(numeric|malformed|ragged|header|encoding|text)",
      {"garbage.csv": bytes(RNG.integers(0, 256, 4000, dtype=np.uint8))}),
    C("train-data-ragged", TRAIN.replace("walk.csv", "ragged.csv"), r"ragged\.csv.*ragged",
      {"ragged.csv": b"a,b\n" + b"1,2\n" * 40 + b"3,4,5\n" + b"1,2\n" * 40}),
    C("train-data-nan", TRAIN.replace("walk.csv", "nan.csv"), r"nan\.csv.*NaN.*row 30, column 'b'",
      {"nan.csv": ("a,b\n" + "".join(f"{i},{i}\n" for i in range(30)) + "1,nan\n").encode()}),
    C("train-data-non-numeric-cell", TRAIN.replace("walk.csv", "cells.csv"),
      r"cells\.csv: non-numeric cell 'oops'",
      {"cells.csv": ("a,b\n" + "".join(f"{i},{i}\n" for i in range(40)) + "1,oops\n").encode()}),
    C("train-data-headerless", TRAIN.replace("walk.csv", "nohead.csv"),
      r"nohead\.csv.*looks like data, not a header",
      {"nohead.csv": "".join(f"{i},{i * 2}\n" for i in range(60)).encode()}),
    C("train-data-too-few-rows", TRAIN.replace("walk.csv", "short.csv"), r"too few rows",
      {"short.csv": b"a,b\n1,2\n3,4\n"}),
    C("train-npy-1d", TRAIN.replace("walk.csv", "v1.npy"), r"v1\.npy.*shape \(100,\)",
      {"v1.npy": npy_bytes(np.arange(100.0))}),
    C("train-npy-4d", TRAIN.replace("walk.csv", "v4.npy"), r"v4\.npy.*shape \(4, 24, 3, 2\)",
      {"v4.npy": npy_bytes(np.zeros((4, 24, 3, 2)))}),
    C("train-npy-object", TRAIN.replace("walk.csv", "obj.npy"), r"obj\.npy.*(pickle|[Oo]bject)",
      {"obj.npy": npy_bytes(np.array([{"a": 1}, None], dtype=object), allow_pickle=True)}),
    C("train-npy-bad-header", TRAIN.replace("walk.csv", "hdr.npy"), r"hdr\.npy: not a readable",
      {"hdr.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': 'garbage"}),
    C("train-npy-truncated", TRAIN.replace("walk.csv", "cut.npy"), r"cut\.npy: .*(truncated|mmap)",
      {"cut.npy": lambda t, m: npy_bytes(np.zeros((300, 3)))[:3000]}),
    C("train-mat-no-variable", TRAIN.replace("walk.csv", "two.mat"), r"two\.mat.*--variable",
      {"two.mat": mat_bytes(a=np.zeros((50, 3)), b=np.ones((50, 2)))}),
    C("train-mat-wrong-variable", TRAIN.replace("walk.csv", "two.mat") + " --variable nope",
      r"two\.mat: no variable 'nope'",
      {"two.mat": mat_bytes(a=np.zeros((50, 3)), b=np.ones((50, 2)))}),
    C("train-unknown-extension", TRAIN.replace("walk.csv", "data.xyz"),
      r"data\.xyz: unsupported file type '\.xyz'", {"data.xyz": walk_csv().encode()}),
    # train: flags
    C("train-device-gpu", TRAIN + " --device gpu", r"--device: unknown device 'gpu'.*cpu"),
    C("train-device-cuda7", TRAIN + " --device cuda:7", r"--device: device 'cuda:7'",
      skip=NO_CUDA7),
    C("train-seq-len-0", TRAIN + " --seq-len 0", r"--seq-len: must be an integer >= 4, got '0'"),
    C("train-seq-len-3", TRAIN + " --seq-len 3", r"--seq-len: must be an integer >= 4, got '3'"),
    C("train-seq-len-5", TRAIN + " --seq-len 5", r"seq.len"),
    C("train-seq-len-10", TRAIN + " --seq-len 10", r"seq.len"),
    C("train-steps-0", TRAIN + " --steps1 0", r"--steps1: must be a positive integer"),
    C("train-batch-size-0", TRAIN + " --batch-size 0", r"--batch-size: must be a positive integer"),
    C("train-lr-negative", TRAIN + " --lr1 -1", r"--lr1: must be a finite number > 0"),
    C("train-lr-nan", TRAIN + " --lr2 nan", r"--lr2: must be a finite number > 0"),
    C("train-max-minutes-0", TRAIN + " --max-minutes 0", r"--max-minutes: must be a finite number"),
    C("train-seed-huge", TRAIN + " --seed 99999999999999999999999", r"--seed: must be an integer"),
    C("train-preset-bad", TRAIN + " --preset xxl", r"--preset: invalid choice: 'xxl'"),
    C("train-stage2-no-resume", TRAIN + " --stage 2", r"stage 2.* needs --resume"),
    C("train-resume-missing", TRAIN + " --resume {t}/nope.pt", r"nope\.pt: no such checkpoint"),
    C("train-resume-garbage", TRAIN + " --resume {t}/rand.pt", r"rand\.pt: truncated or corrupt",
      {"rand.pt": bytes(RNG.integers(0, 256, 2000, dtype=np.uint8))}),
    # train: config overrides
    C("set-no-equals", TRAIN + " --set hidden", r"--set expects FIELD=VALUE, got 'hidden'"),
    C("set-unknown-field", TRAIN + " --set bogus=1", r"unknown config fields: \['bogus'\]"),
    C("set-hidden-abc", TRAIN + " --set hidden=abc", r"hidden must be an integer, got 'abc'"),
    C("set-hidden-float", TRAIN + " --set hidden=16.5", r"hidden must be an integer"),
    C("set-phi-convs-0", TRAIN + " --set phi_convs=0", r"phi_convs must be >= 1"),
    C("set-seq-len", TRAIN + " --set seq_len=48", r"seq_len cannot be overridden.*--seq-len"),
    C("set-channels", TRAIN + " --set channels=3", r"channels cannot be overridden"),
    C("set-single-scale", TRAIN + " --set scales=[12]", r"scales needs at least two"),
    C("set-scales-not-increasing", TRAIN + " --set scales=[1,4,2,6]",
      r"scales must be strictly increasing"),
    C("set-scales-not-a-list", TRAIN + " --set scales=abc", r"scales must be a list"),
    C("set-d-model-n-head", TRAIN + " --set d_model=33",
      r"d_model \(33\) must be a multiple of n_head"),
    C("set-dropout", TRAIN + " --set dropout=1.5", r"dropout must be in \[0, 0\.999\]"),
    C("set-codebook-1", TRAIN + " --set codebook_size=1", r"codebook_size must be in \[2, "),
    C("set-cosine-not-bool", TRAIN + " --set cosine_codes=3",
      r"cosine_codes must be true or false"),
    # train: outputs
    C("train-out-folder", TRAIN.replace("{t}/new.pt", "{t}/adir"), r"adir is a folder"),
    C("train-out-parent-is-file", TRAIN.replace("{t}/new.pt", "{t}/afile.txt/m.pt"),
      r"cannot write .*afile\.txt/m\.pt"),
    C("train-out-exists", TRAIN.replace("{t}/new.pt", "{t}/existing.npy"),
      r"existing\.npy exists; pass --force"),
    C("train-out-unwritable", TRAIN.replace("{t}/new.pt", "/sys/timemar-bad-input-test.pt"),
      r"cannot write /sys/timemar-bad-input-test\.pt", skip=NOT_LINUX),
    # sample: flags
    C("sample-device-gpu", SAMPLE + " --device gpu", r"--device: unknown device 'gpu'.*cpu"),
    C("sample-device-tpu", SAMPLE + " --device tpu", r"--device: unknown device 'tpu'"),
    C("sample-device-empty", SAMPLE + " --device ''", r"--device: unknown device ''"),
    C("sample-device-mps", SAMPLE + " --device mps", r"--device: unsupported device 'mps'"),
    C("sample-device-cuda7", SAMPLE + " --device cuda:7", r"--device: device 'cuda:7'",
      skip=NO_CUDA7),
    C("sample-backend-bad", SAMPLE + " --backend warp", r"--backend: invalid choice: 'warp'"),
    C("sample-temperature-0", SAMPLE + " --temperature 0",
      r"--temperature: must be a finite number > 0"),
    C("sample-temperature-negative", SAMPLE + " --temperature -1", r"--temperature: must be"),
    C("sample-temperature-nan", SAMPLE + " --temperature nan", r"--temperature: must be .*'nan'"),
    C("sample-temperature-inf", SAMPLE + " --temperature inf", r"--temperature: must be .*'inf'"),
    C("sample-temperature-abc", SAMPLE + " --temperature warm", r"--temperature: must be"),
    C("sample-top-p-0", SAMPLE + " --top-p 0", r"--top-p: must be a number in \(0, 1\]"),
    C("sample-top-p-1.5", SAMPLE + " --top-p 1.5", r"--top-p: must be a number in \(0, 1\]"),
    C("sample-top-p-nan", SAMPLE + " --top-p nan", r"--top-p: must be a number in \(0, 1\]"),
    C("sample-top-k-0", SAMPLE + " --top-k 0", r"--top-k: must be a positive integer"),
    C("sample-n-0", SAMPLE.replace("--n 5", "--n 0"), r"--n: must be a positive integer, got '0'"),
    C("sample-n-negative", SAMPLE.replace("--n 5", "--n -3"), r"--n: must be a positive integer"),
    C("sample-n-abc", SAMPLE.replace("--n 5", "--n abc"),
      r"--n: must be a positive integer, got 'abc'"),
    C("sample-n-float", SAMPLE.replace("--n 5", "--n 2.5"), r"--n: must be a positive integer"),
    C("sample-n-missing", SAMPLE.replace("--n 5", ""), r"required: -n/--n"),
    C("sample-batch-size-0", SAMPLE + " --batch-size 0",
      r"--batch-size: must be a positive integer"),
    C("sample-seed-abc", SAMPLE + " --seed abc", r"--seed: must be an integer"),
    C("sample-scale-bad", SAMPLE + " --scale kelvin", r"--scale: invalid choice: 'kelvin'"),
    C("sample-unknown-flag", SAMPLE + " --bogus", r"unrecognized arguments: --bogus"),
    C("sample-cpu-streams-env", SAMPLE, r"TIMEMAR_CPU_STREAMS must be a positive integer",
      patch=lambda mp: mp.setenv("TIMEMAR_CPU_STREAMS", "zero")),
    # sample: checkpoints
    C("ckpt-missing", SAMPLE.replace("m.pt", "nope.pt"), r"nope\.pt: no such checkpoint file"),
    C("ckpt-folder", SAMPLE.replace("{t}/m.pt", "{t}/adir"), r"adir: is a folder"),
    C("ckpt-empty", SAMPLE.replace("m.pt", "empty.pt"), r"empty\.pt: truncated or corrupt",
      {"empty.pt": b""}),
    C("ckpt-truncated", SAMPLE.replace("m.pt", "half.pt"), r"half\.pt: truncated or corrupt",
      {"half.pt": lambda t, m: m["m.pt"][:len(m["m.pt"]) // 2]}),
    C("ckpt-random-bytes", SAMPLE.replace("m.pt", "rand.pt"), r"rand\.pt: truncated or corrupt",
      {"rand.pt": bytes(RNG.integers(0, 256, 5000, dtype=np.uint8))}),
    C("ckpt-zip-not-torch", SAMPLE.replace("m.pt", "zip.pt"),
      r"zip\.pt: (truncated or corrupt|not a)",
      {"zip.pt": lambda t, m: _zip_bytes()}),
    C("ckpt-format-version", SAMPLE.replace("m.pt", "v99.pt"),
      r"v99\.pt: checkpoint format version 99",
      {"v99.pt": lambda t, m: ckpt_dict(m, format_version=99)}),
    C("ckpt-pickle-payload", SAMPLE.replace("m.pt", "evil.pt"), r"evil\.pt: refused: .*pickled",
      {"evil.pt": lambda t, m: torch_bytes({"format_version": 1, "x": Sneaky(str(t / "PWNED"))})}),
    C("ckpt-not-a-dict", SAMPLE.replace("m.pt", "list.pt"),
      r"list\.pt: not a timemar-engine checkpoint",
      {"list.pt": lambda t, m: torch_bytes([1, 2, 3])}),
    C("ckpt-missing-keys", SAMPLE.replace("m.pt", "bare.pt"), r"bare\.pt: checkpoint lacks",
      {"bare.pt": lambda t, m: torch_bytes({"format_version": 1, "config": {}})}),
    C("ckpt-bad-config", SAMPLE.replace("m.pt", "cfg.pt"), r"cfg\.pt: .*hidden must be an integer",
      {"cfg.pt": lambda t, m: bad_config(m)}),
    # sample: outputs
    C("sample-out-folder", SAMPLE.replace("{t}/s.npy", "{t}/adir"), r"adir is a folder"),
    C("sample-out-parent-is-file", SAMPLE.replace("{t}/s.npy", "{t}/afile.txt/s.npy"),
      r"cannot write .*afile\.txt/s\.npy"),
    C("sample-out-exists", SAMPLE.replace("s.npy", "existing.npy"),
      r"existing\.npy exists; pass --force"),
    C("sample-out-unwritable", SAMPLE.replace("{t}/s.npy", "/sys/timemar-bad-input-test.npy"),
      r"cannot write /sys/timemar-bad-input-test\.npy", skip=NOT_LINUX),
    C("sample-parquet-channel-window",
      SAMPLE.replace("m.pt", "win.pt").replace("s.npy", "s.parquet"),
      r"channel 'window'"),
    C("sample-csv-channel-step", SAMPLE.replace("m.pt", "step.pt").replace("s.npy", "s.csv"),
      r"channel 'step'"),
    C("sample-parquet-without-pyarrow", SAMPLE.replace("s.npy", "s.parquet"),
      r"needs pyarrow.*pip install 'timemar-engine\[parquet\]'", patch=no_pyarrow),
    C("sample-format-contradicts-extension", SAMPLE.replace("s.npy", "s.csv") + " --format npy",
      r"extension \.csv but --format is npy"),
    # evaluate: --real / --fake
    C("eval-real-without-fake", PAIR.replace("--fake {t}/fake.npy", ""),
      r"--real and --fake go together"),
    C("eval-pair-with-ckpt", PAIR + " --ckpt {t}/m.pt", r"--real and --fake go together"),
    C("eval-real-missing", PAIR.replace("real.npy", "missing.npy"),
      r"--real .*missing\.npy: no such file"),
    C("eval-real-folder", PAIR.replace("{t}/real.npy", "{t}/adir"), r"--real .*adir: is a folder"),
    C("eval-real-not-npy", PAIR.replace("real.npy", "walk.csv"),
      r"--real .*walk\.csv: not a \.npy file"),
    C("eval-real-2d", PAIR.replace("real.npy", "r2.npy"),
      r"--real .*r2\.npy: expected \(n, T, C\).*\(10, 3\)",
      {"r2.npy": npy_bytes(np.zeros((10, 3)))}),
    C("eval-real-pickle", PAIR.replace("real.npy", "obj.npy"),
      r"--real .*obj\.npy: the array holds Python objects",
      {"obj.npy": npy_bytes(np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)}),
    C("eval-real-strings", PAIR.replace("real.npy", "str.npy"),
      r"--real .*str\.npy: expected numbers",
      {"str.npy": npy_bytes(np.full((4, 24, 3), "x"))}),
    C("eval-real-truncated", PAIR.replace("real.npy", "cut.npy"), r"--real .*cut\.npy: truncated",
      {"cut.npy": lambda t, m: npy_bytes(np.zeros((64, 24, 3)))[:3000]}),
    C("eval-real-bad-header", PAIR.replace("real.npy", "hdr.npy"),
      r"--real .*hdr\.npy: not a readable \.npy",
      {"hdr.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': 'garbage"}),
    C("eval-real-empty-array", PAIR.replace("real.npy", "none.npy"),
      r"--real .*none\.npy: the array is empty",
      {"none.npy": npy_bytes(np.zeros((0, 24, 3)))}),
    C("eval-fake-nan", PAIR.replace("fake.npy", "nanf.npy"), r"--fake .*nanf\.npy: contains NaN",
      {"nanf.npy": npy_bytes(np.where(np.arange(64 * 72).reshape(64, 24, 3) == 100, np.nan, 0.5))}),
    C("eval-shape-mismatch", PAIR.replace("fake.npy", "f12.npy"),
      r"--real .*real\.npy has windows of T x C = 24 x 3, --fake .*f12\.npy 12 x 3",
      {"f12.npy": npy_bytes(np.zeros((64, 12, 3)))}),
    C("eval-predictive-one-channel",
      PAIR.replace("real.npy", "r1.npy").replace("fake.npy", "f1.npy").replace(
          "correlational", "predictive"), r"predictive metric needs at least 2 channels",
      {"r1.npy": npy_bytes(np.zeros((8, 24, 1))), "f1.npy": npy_bytes(np.zeros((8, 24, 1)))}),
    C("eval-discriminative-one-window",
      PAIR.replace("real.npy", "r1.npy").replace("correlational", "discriminative"),
      r"discriminative metric needs at least 2 windows; --real has 1",
      {"r1.npy": npy_bytes(np.zeros((1, 24, 3)))}),
    C("eval-n-too-small-for-metric", EVAL.replace("correlational", "context_fid") + " --n 1",
      r"context_fid metric needs at least 2 windows; --n has 1"),
    C("eval-n-with-pair", PAIR + " --n 5", r"--n applies to sampling from a checkpoint"),
    # evaluate: flags
    C("eval-n-0", EVAL + " --n 0", r"--n: must be a positive integer"),
    C("eval-n-abc", EVAL + " --n abc", r"--n: must be a positive integer"),
    C("eval-repeats-0", PAIR.replace("--repeats 1", "--repeats 0"),
      r"--repeats: must be a positive"),
    C("eval-iterations-abc", PAIR + " --iterations discriminative=abc",
      r"--iterations: discriminative iterations must be a positive integer, got 'abc'"),
    C("eval-iterations-0", PAIR + " --iterations context_fid=0",
      r"--iterations: .*positive integer"),
    C("eval-iterations-unknown", PAIR + " --iterations correlational=5",
      r"--iterations: 'correlational' has no iterations setting"),
    C("eval-iterations-no-equals", PAIR + " --iterations 5", r"--iterations: expects METRIC=N"),
    C("eval-metric-unknown", PAIR.replace("correlational", "bogus"),
      r"--metrics: invalid choice: 'bogus'"),
    C("eval-device-gpu", PAIR + " --device gpu", r"--device: unknown device 'gpu'"),
    C("eval-plot-without-sklearn", PAIR + " --plot {t}/p.png", r"--plot needs sklearn.*pip install",
      patch=no_sklearn),
    # evaluate: outputs
    C("eval-json-exists", PAIR + " --json {t}/existing.json",
      r"existing\.json exists; pass --force"),
    C("eval-json-folder", PAIR + " --json {t}/adir", r"adir is a folder"),
    C("eval-plot-folder", PAIR + " --plot {t}/adir", r"adir is a folder"),
    C("eval-json-parent-is-file", PAIR + " --json {t}/afile.txt/e.json",
      r"cannot write .*afile\.txt"),
    # evaluate: a checkpoint
    C("eval-ckpt-missing", EVAL.replace("m.pt", "nope.pt"), r"nope\.pt: no such checkpoint file"),
    C("eval-ckpt-garbage", EVAL.replace("m.pt", "rand.pt"), r"rand\.pt: truncated or corrupt",
      {"rand.pt": bytes(RNG.integers(0, 256, 3000, dtype=np.uint8))}),
    C("eval-ckpt-no-data", EVAL.replace("--data {t}/walk.csv", ""), r"say which real data"),
    C("eval-data-missing", EVAL.replace("walk.csv", "nope.csv"), r"nope\.csv: no such file"),
    C("eval-data-channels", EVAL.replace("walk.csv", "two.csv"), r"two\.csv has 2 channels",
      {"two.csv": walk_csv(columns=("a", "b")).encode()}),
    # info and the top level
    C("info-ckpt-missing", "info --ckpt {t}/nope.pt", r"nope\.pt: no such checkpoint file"),
    C("info-ckpt-folder", "info --ckpt {t}/adir", r"adir: is a folder"),
    C("info-ckpt-truncated", "info --ckpt {t}/half.pt", r"half\.pt: truncated or corrupt",
      {"half.pt": lambda t, m: m["m.pt"][:1000]}),
    C("info-ckpt-pickle", "info --ckpt {t}/evil.pt --json", r"evil\.pt: refused",
      {"evil.pt": lambda t, m: torch_bytes({"format_version": 1, "x": Sneaky(str(t / "PWNED"))})}),
    C("info-ckpt-version", "info --ckpt {t}/v0.pt", r"v0\.pt: checkpoint format version 0",
      {"v0.pt": lambda t, m: ckpt_dict(m, format_version=0)}),
    C("info-unknown-flag", "info --ckpt {t}/m.pt --verbose", r"unrecognized arguments: --verbose"),
    C("no-command", "", r"required: COMMAND"),
    C("unknown-command", "frobnicate", r"invalid choice: 'frobnicate'"),
]


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello.txt", "not a checkpoint")
    return buf.getvalue()


def prepare(t: Path, models: dict[str, bytes], case: Case) -> list[str]:
    for name, content in {**standard_files(models), **case.files}.items():
        path = t / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content(t, models) if callable(content) else content)
    return shlex.split(case.argv.replace("{t}", str(t)))


def run_in_process(argv: list[str], capsys) -> tuple[int, str, list[str]]:
    """main(argv) as the console script runs it: (exit status, stderr, shown warnings)."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse; the console script exits with this code too
            rc = e.code
        except BaseException as e:  # noqa: BLE001 - this is what the sweep is looking for
            pytest.fail(f"{type(e).__name__} escaped main() (a traceback for the user): {e}")
    shown = [f"{w.category.__name__}: {w.message}" for w in caught
             if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    return rc, capsys.readouterr().err, shown


def check_clean(rc, err: str, shown: list[str], expect: str, before: dict, after: dict) -> None:
    assert rc not in (0, None), f"exit status {rc!r}, stderr {err!r}"
    assert "Traceback" not in err, err
    assert not shown, f"warnings would go to stderr too: {shown}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}: {err!r}"
    assert "error" in lines[0], lines[0]
    assert re.search(expect, lines[0]), f"{expect!r} not in {lines[0]!r}"
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    assert after == before, (f"files changed: added {sorted(after.keys() - before.keys())}, "
                             f"removed {sorted(before.keys() - after.keys())}, modified {changed}")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=pytest.mark.skipif(
    c.skip is not None, reason=c.skip or "")) for c in CASES])
def test_bad_input_is_one_clean_error(case, tmp_path, models, capsys, monkeypatch):
    argv = prepare(tmp_path, models, case)
    if case.patch:
        case.patch(monkeypatch)
    before = snapshot(tmp_path)
    rc, err, shown = run_in_process(argv, capsys)
    check_clean(rc, err, shown, case.expect, before, snapshot(tmp_path))


def test_the_table_is_large_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40
    for sub in ("train", "sample", "evaluate", "info"):
        assert any(c.argv.startswith(sub) for c in CASES), sub


# --- the real entry point ---------------------------------------------------------------------
SUBPROCESS = ["sample-device-gpu", "eval-real-missing", "ckpt-pickle-payload", "set-hidden-abc",
              "sample-temperature-nan"]


@pytest.mark.parametrize("case_id", SUBPROCESS)
def test_bad_input_through_python_m(case_id, tmp_path, models):
    """`python -m timemar_engine ...`: exit status, stderr and files as the user sees them."""
    case = next(c for c in CASES if c.id == case_id)
    argv = prepare(tmp_path, models, case)
    before = snapshot(tmp_path)
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    r = subprocess.run([sys.executable, "-m", "timemar_engine", *argv], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr)
    check_clean(r.returncode, r.stderr, [], case.expect, before, snapshot(tmp_path))


# --- inputs that look extreme but are valid ---------------------------------------------------
def test_tiny_temperature_and_large_top_k_are_valid(tmp_path, models, capsys):
    """--temperature 1e-45 samples the argmax (so every seed gives the same windows, no NaN);
    --top-k above the codebook size keeps every code."""
    (tmp_path / "m.pt").write_bytes(models["m.pt"])
    outs = []
    for seed, backend in ((1, "engine"), (2, "engine"), (3, "eager")):
        out = tmp_path / f"cold{seed}.npy"
        assert main(["sample", "--ckpt", str(tmp_path / "m.pt"), "--n", "6", "--out", str(out),
                     "--temperature", "1e-45", "--seed", str(seed), "--backend", backend,
                     "--quiet"]) == 0
        outs.append(np.load(out))
        assert np.isfinite(outs[-1]).all()
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], outs[2], atol=1e-4)  # eager: the same argmax tokens
    out = tmp_path / "k.npy"
    assert main(["sample", "--ckpt", str(tmp_path / "m.pt"), "--n", "4", "--out", str(out),
                 "--top-k", "100000", "--seed", "0", "--quiet"]) == 0
    ref = tmp_path / "ref.npy"
    assert main(["sample", "--ckpt", str(tmp_path / "m.pt"), "--n", "4", "--out", str(ref),
                 "--seed", "0", "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(out), np.load(ref))
    assert capsys.readouterr().err == ""


def test_sampling_arguments_are_checked_where_they_enter(tmp_path, models):
    from timemar_engine.engine import Engine
    from timemar_engine.sampling import check_filters, filter_logits

    (tmp_path / "m.pt").write_bytes(models["m.pt"])
    e = Engine.load(tmp_path / "m.pt", device="cpu")
    bad = [dict(temperature=0), dict(temperature=-1.0), dict(temperature=float("nan")),
           dict(temperature=float("inf")), dict(temperature=10 ** 400), dict(temperature="1"),
           dict(temperature=True),
           dict(top_k=0), dict(top_k=2.5), dict(top_k=True), dict(top_p=0), dict(top_p=1.5),
           dict(top_p=float("nan")), dict(batch_size=0), dict(batch_size=2.0), dict(seed=1.5),
           dict(seed="1"), dict(seed=2 ** 64), dict(scale="kelvin")]
    for kw in bad:
        name = next(iter(kw))
        with pytest.raises(ValueError, match=name):
            e.iter_batches(3, **kw)  # raised at the call, before a batch is drawn
        with pytest.raises(ValueError, match=name):
            e.sample_to(tmp_path / "never.npy", 3, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    assert check_filters(np.float32(0.5), np.int64(3), 1) == {"temperature": 0.5, "top_k": 3,
                                                              "top_p": 1.0}
    logits = torch.tensor([[1.0, 3.0, 3.0, -2.0], [0.5, -1.0, 0.25, 0.0]])
    for t in (1e-45, 1e-300, 5e-324, 1e-30):
        f = filter_logits(logits, temperature=t)
        assert not f.isnan().any()
        if t < 1e-38:  # below float32's smallest normal number: the limit itself
            assert torch.equal(torch.isfinite(f), logits == logits.amax(-1, keepdim=True))
        p = f.softmax(-1)
        assert torch.allclose(p[0], torch.tensor([0, 0.5, 0.5, 0])) and p[1, 0] == 1
    assert torch.equal(filter_logits(logits, top_k=99), logits)  # k >= V keeps every code
