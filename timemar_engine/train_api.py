"""`train()`: train or resume a TimeMAR model from Python; the CLI's `train` is a thin layer over it.

Every argument is checked before data is read or a step is taken. On resume the original run's
model and training settings are restored from the checkpoint; an argument that contradicts them
is an error (at a stage boundary, the settings of stages not yet begun may change)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .backends import resolve_backend, resolve_device
from .checkpoint import read_checkpoint
from .config import CHOICES, ModelConfig, TrainConfig, preset as make_preset
from .data import MinMaxScaler, Series, WindowSet, load_any
from .ddp import Ranks
from .holdout import split_windows
from .model import TimeMAR
from .safe_io import check_writable
from .training import SAVE_EVERY_S, OnStep, Trainer

if TYPE_CHECKING:
    from .engine import Engine

STAGES = {"1": (1,), "2": (2,), "both": (1, 2)}
DATA_DEFAULTS = {"nan": "error", "header": True, "non_numeric": "error"}
# training fields that may change on resume at a stage boundary, by the stage they belong to
LATER_STAGE_FIELDS = {2: ("stage2_steps", "lr2", "max_minutes", "precision")}


class TrainError(ValueError):
    """Training arguments that cannot be carried out; the message says which and why."""


def _series(data, data_dir, variable, seq_len: int, opts: dict) -> Series:
    if isinstance(data, Series):
        return data
    if isinstance(data, np.ndarray):
        if data.ndim not in (2, 3) or not np.issubdtype(data.dtype, np.number):
            raise TrainError(f"an array must be a numeric 2-D series (time x channels) or 3-D "
                             f"windows (n x time x channels), got {data.dtype} {data.shape}")
        if not np.isfinite(data).all():
            raise TrainError("the array contains NaN or inf")
        return Series(data, [f"ch{c}" for c in range(data.shape[-1])], "array")
    if not isinstance(data, (str, os.PathLike)):
        raise TrainError(f"data must be a dataset name, a file path or an array, got {type(data)}")
    return load_any(str(data), data_dir, variable, opts["nan"], seq_len, header=opts["header"],
                    non_numeric=opts["non_numeric"])


def _check_resume_conflicts(path, meta: dict, cfg: ModelConfig, state: dict | None,
                            given: dict, preset: str | None, overrides: dict, seq_len) -> dict:
    """The stored training settings, updated by `given` where allowed; conflicts are errors."""
    stored = dict(meta.get("train_config", {}))
    stored.setdefault("precision", "fp32")  # runs from before the option trained in fp32
    at_boundary = state is not None and int(state.get("step", 0)) == 0
    changeable = LATER_STAGE_FIELDS.get(state.get("stage"), ()) if at_boundary and state else ()
    for key, value in given.items():
        if value is None or stored.get(key) == value:
            continue
        if key not in changeable:
            raise TrainError(f"{path} was trained with {key}={stored.get(key)!r}; resuming "
                             f"restores it, so {key}={value!r} conflicts (omit it)")
        stored[key] = value
    if preset is not None and meta.get("preset") not in (None, preset):
        raise TrainError(f"{path} was trained with preset {meta['preset']!r}, not {preset!r}")
    if seq_len is not None and seq_len != cfg.seq_len:
        raise TrainError(f"{path} was trained with seq_len {cfg.seq_len}, not {seq_len}")
    current = cfg.to_dict()
    for key, value in overrides.items():
        if key not in current:
            raise TrainError(f"unknown config field {key!r}")
        if current[key] != (list(value) if isinstance(value, tuple) else value):
            raise TrainError(f"{path} was trained with {key}={current[key]!r}; resuming "
                             f"restores it, so {key}={value!r} conflicts (omit it)")
    return stored


def train(data, *, out: str | os.PathLike = "model.pt", seq_len: int | None = None,
          preset: str | None = None, overrides: dict | None = None,
          resume: str | os.PathLike | None = None, stage: str = "both",
          steps1: int | None = None, steps2: int | None = None, batch_size: int | None = None,
          lr1: float | None = None, lr2: float | None = None, seed: int | None = None,
          max_minutes: float | None = None, precision: str | None = None, device: str = "auto",
          data_dir: str | os.PathLike | None = None, variable: str | None = None,
          nan: str | None = None, header: bool | None = None, non_numeric: str | None = None,
          holdout: float | None = None, force: bool = False, progress: bool = True,
          save_every: float = SAVE_EVERY_S, on_step: OnStep | None = None) -> "Engine":
    """Train (stage 1 VQ-VAE, stage 2 transformer) on `data` and return the trained `Engine`.

    Launched by torchrun (WORLD_SIZE > 1), every process runs this with the same arguments:
    the job trains data-parallel (see `ddp`), with batch_size the global batch.

    data: a named dataset, a file (.csv, .npy, .mat, .parquet), or an array ((L, C) series or
    (N, T, C) windows). None means "default" (fresh run: seq_len 24, preset 's', TrainConfig's
    values, nan 'error') or, with `resume`, "as in the original run". The checkpoint `out` is
    written at stage ends, every `save_every` seconds and on SIGINT/SIGTERM (then resumable).
    on_step(stage, step, logs) may return True to stop after that step with a resumable
    checkpoint. max_minutes: a time budget for the run (40% stage 1 when both run); a stage
    without steps1 / steps2 trains until its share is spent, one with them stops early if they
    do not fit (3000 steps a stage without either). holdout: the fraction of the data kept out
    of training (`holdout.split_windows`) for the memorisation check of `evaluate`, also scored
    at the end of each stage (reconstruction error, cross-entropy) beside the training windows
    (default 0: train on every window). precision: stage 2's arithmetic, auto (bf16 where the
    hardware has it natively), fp32 or bf16."""
    kw = {k: v for k, v in locals().items() if k != "data"}  # the arguments, as given
    import torch.distributed as dist

    from .distributed import init_from_env, launched_by_torchrun, local_rank

    if not launched_by_torchrun():
        return _train(data, Ranks(), **kw)
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank())
    init_from_env(dev)
    try:
        engine = _train(data, Ranks(dist.get_rank(), dist.get_world_size()),
                        **{**kw, "device": str(dev)})
        dist.barrier()  # no rank exits while rank 0 still reports and saves (torchrun would
        return engine   # then stop the job and abort the others)
    finally:
        dist.destroy_process_group()


def _train(data, ranks: Ranks, *, out, seq_len, preset, overrides, resume, stage, steps1, steps2,
           batch_size, lr1, lr2, seed, max_minutes, precision, device, data_dir, variable, nan,
           header, non_numeric, holdout, force, progress, save_every, on_step) -> "Engine":
    from .engine import Engine

    progress = progress and ranks.lead
    stages = STAGES.get(str(stage))
    if stages is None:
        raise TrainError(f"stage must be 1, 2 or both, got {stage!r}")
    if stages == (2,) and resume is None:
        raise TrainError("stage 2 alone needs --resume CKPT (resume=CKPT in Python): a "
                         "checkpoint with stage 1 done")
    out = Path(out)
    same_file = resume is not None and Path(resume).resolve() == out.resolve()
    if ranks.lead:
        check_writable(out, overwrite=force or same_file)
    if precision is not None and precision not in CHOICES["precision"]:
        raise TrainError(f"precision must be one of {', '.join(CHOICES['precision'])}, got "
                         f"{precision!r}")
    if holdout is not None and not 0 <= holdout <= 0.5:
        raise TrainError(f"holdout must be a fraction in [0, 0.5], got {holdout!r}")
    dev = resolve_device(device)
    overrides = dict(overrides or {})
    given = {"stage1_steps": steps1, "stage2_steps": steps2, "batch_size": batch_size,
             "lr1": lr1, "lr2": lr2, "seed": seed, "max_minutes": max_minutes,
             "precision": precision}
    opts_given = {"nan": nan, "header": header, "non_numeric": non_numeric}
    state = None
    if resume is not None:
        obj = read_checkpoint(resume)
        cfg, meta = ModelConfig.from_dict(obj["config"]), obj.get("meta", {})
        state = obj.get("train_state")
        tdict = _check_resume_conflicts(resume, meta, cfg, state, given, preset, overrides, seq_len)
        tcfg = TrainConfig.from_dict(tdict)
        opts = {**DATA_DEFAULTS, **meta.get("data_options", {})}
        for key, value in opts_given.items():
            if value is not None and value != opts[key]:
                raise TrainError(f"{resume} was trained with {key}={opts[key]!r}, not {value!r}")
        stored = meta.get("holdout", {}).get("fraction", 0.0)
        if holdout is not None and holdout != stored:
            raise TrainError(f"{resume} was trained with holdout={stored!r}, not {holdout!r}")
        if state is None or int(state["stage"]) > max(stages):
            if ranks.lead:
                print(f"{resume}: the requested stage(s) are already complete; nothing to do")
            return Engine.load(resume, device=str(dev))
        if min(stages) > int(state["stage"]):
            raise TrainError(f"{resume}: stage {state['stage']} is not complete (stopped at step "
                             f"{state.get('step', 0)}); resume it with stage=both or stage=1")
        if tcfg.max_minutes != meta.get("train_config", {}).get("max_minutes"):
            state = {**state, "budget_start": state.get("run_seconds", 0.0)}
    else:
        tcfg = TrainConfig(**{k: v for k, v in given.items() if v is not None})
        make_preset(preset or "s", seq_len or 24, 1, overrides)  # fields checked before any I/O
        opts = {k: (DATA_DEFAULTS[k] if v is None else v) for k, v in opts_given.items()}
        meta = {"seed": tcfg.seed, "preset": preset or "s", "data_options": opts,
                "source": str(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__}
    T = cfg.seq_len if resume is not None else (seq_len or 24)
    series = _series(data, data_dir, variable, T, opts)
    if resume is not None:
        model = TimeMAR(cfg)
        model.vqvae.load_state_dict(obj["vqvae"])
        model.gpt.load_state_dict(obj["gpt"])
        scaler = MinMaxScaler(obj["scaler_lo"].numpy(), obj["scaler_hi"].numpy())
        if series.channels != cfg.channels:
            raise TrainError(f"{resume} was trained on {cfg.channels} channels; this data has "
                             f"{series.channels}")
    else:
        cfg = make_preset(preset or "s", T, series.channels, overrides)
        torch.manual_seed(tcfg.seed)
        model = TimeMAR(cfg)
        scaler = MinMaxScaler.for_series(series)
        meta["dataset"] = series.name
    if tcfg.batch_size % ranks.world:
        raise TrainError(f"batch_size {tcfg.batch_size} (the global batch) must be a multiple of "
                         f"the {ranks.world} processes")
    windows = WindowSet.from_series(series, T, scaler)
    fraction = meta.get("holdout", {}).get("fraction", 0.0) if resume is not None else holdout
    held = None
    if fraction:
        windows, held = split_windows(windows, fraction)
        meta["holdout"] = {"fraction": fraction, "train_windows": len(windows),
                           "holdout_windows": len(held)}
    name, columns = series.name, series.columns
    del series  # the scaled copy is all training reads; a memory-mapped input is unmapped
    if resume is not None and meta.get("n_windows") not in (None, len(windows)):
        raise TrainError(f"{resume} was trained on {meta['n_windows']} windows; this data gives "
                         f"{len(windows)}: resume with the same data")
    counts = model.parameter_counts()
    meta["parameters"] = counts
    if progress:
        print(f"data: {name}, {len(windows)} windows of {T} x {windows.channels}; device "
              f"{dev}; parameters {counts['total']:,} (VQ-VAE "
              f"{counts['total'] - counts['transformer']:,}, transformer "
              f"{counts['transformer']:,})")
    trainer = Trainer(model, windows, scaler, columns, tcfg, out, dev, meta,
                      progress=progress, save_every=save_every, on_step=on_step,
                      overwrite=force or same_file, ranks=ranks, held=held)
    trainer.run(stages, state)
    if trainer.stopped_at is None and ranks.lead:
        print(f"saved {out}")
    engine = Engine(model.eval(), scaler, columns, trainer.meta, dev,
                    resolve_backend("auto", dev, model.cfg.multiscale), out)
    engine.stopped_at = trainer.stopped_at
    return engine
