"""Two-stage training in plain PyTorch: stage 1 the VQ-VAE, stage 2 the scale GPT."""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .backends import resolve_train_precision, train_autocast
from .checkpoint import save_checkpoint
from .config import TrainConfig
from .data import MinMaxScaler, WindowSet
from .ddp import Ranks
from .model import TimeMAR
from .quantizer import perplexity
from .sampling import generate
from .schedule import EpochOrder, StepBudget
from .stage_data import (Tokens, model_batch, per_scale_ce, split_scales,
                         stage1_report, stage2_report)
from .value_support import ValueSupport

SAVE_EVERY_S = 120.0


class StopRequested(Exception):
    """Raised inside the step loop once a resumable checkpoint of the last step is written."""


@torch.no_grad()
def calibration_samples(model: TimeMAR, device, n: int = 2048, batch: int = 256) -> np.ndarray:
    """n unsnapped samples (n, T, C) in unit scale, seeded, for `ValueSupport.calibrate`."""
    model.eval()
    gen = torch.Generator(device).manual_seed(0)
    x = torch.cat([generate(model, batch, gen) for _ in range(-(-n // batch))])[:n]
    return ((x.double() + 1) / 2).cpu().numpy()


@contextlib.contextmanager
def deferred_signals():
    """Within the step loop SIGINT and SIGTERM only set a flag, which the loop checks between
    steps, so the checkpoint it then writes is a consistent step; a second signal acts at once.
    A signal the process ignores (SIGINT under nohup or in a background job) stays ignored."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(s) is not signal.SIG_IGN}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    def handler(signum, frame) -> None:
        if got:
            restore()
            signal.raise_signal(signum)
        got.append(signum)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield got
    finally:
        restore()


OnStep = Callable[[int, int, dict], bool | None]


class Trainer:
    """Runs the stages; saves atomically to `out` at stage ends, every `save_every` seconds and
    when interrupted, with everything needed to continue exactly (see `snapshot`)."""

    def __init__(self, model: TimeMAR, windows: WindowSet | np.ndarray, scaler: MinMaxScaler,
                 channels: list[str], tcfg: TrainConfig, out: str | Path, device,
                 meta: dict | None = None, progress: bool = True,
                 save_every: float = SAVE_EVERY_S, on_step: OnStep | None = None,
                 overwrite: bool = True, ranks: Ranks = Ranks(), held: WindowSet | None = None):
        """held: windows kept out of training (`train --holdout`); the stage reports score them
        too, so a checkpoint shows how much better the model fits its training windows."""
        if not isinstance(windows, WindowSet):  # (N, T, C) windows in [0, 1]
            windows = WindowSet(np.asarray(windows, dtype=np.float32), np.shape(windows)[1])
        self.model, self.windows, self.tcfg = model.to(device), windows, tcfg
        self.out, self.device, self.progress = Path(out), device, progress
        self.scaler, self.channels, self.held = scaler, channels, held
        self.save_every, self.on_step, self.ranks = save_every, on_step, ranks
        self._overwrite = overwrite  # False: the first save refuses a file that appeared meanwhile
        self.meta = meta if meta is not None else {}
        self.meta.setdefault("history", {})
        self.meta["train_config"] = asdict(tcfg)
        self.meta["n_windows"] = len(windows)
        self.meta["value_support"] = ValueSupport.fit(windows.unit).to_dict()
        self.stopped_at: tuple[int, int] | None = None
        self._last_save = time.perf_counter()
        self._run_t0, self._budget_start = time.perf_counter(), 0.0

    def run_seconds(self) -> float:
        return time.perf_counter() - self._run_t0

    def save(self, train_state: dict | None = None) -> None:
        """Write the checkpoint (rank 0 only: every rank holds the same weights and state)."""
        self._last_save = time.perf_counter()
        if not self.ranks.lead:
            return
        self.meta["train_minutes"] = round(self.run_seconds() / 60, 2)
        save_checkpoint(self.out, self.model, self.scaler, self.channels, self.meta, train_state,
                        self._overwrite)
        self._overwrite = True  # later saves of this run replace its own checkpoint

    def run(self, stages: tuple[int, ...], resume: dict | None = None) -> dict:
        """Train `stages`, continuing from a checkpoint's train_state; returns the meta."""
        resume = resume or {}
        self._run_t0 = time.perf_counter() - resume.get("run_seconds", 0.0)
        self._budget_start = resume.get("budget_start", 0.0)
        budget = self.tcfg.max_minutes * 60 if self.tcfg.max_minutes else None
        try:
            for stage in stages:
                if resume.get("stage", 0) > stage:
                    continue
                state = resume if resume.get("stage") == stage else {}
                if "torch_rng" in state:
                    torch.set_rng_state(state["torch_rng"])
                if "cuda_rng" in state and torch.device(self.device).type == "cuda":
                    torch.cuda.set_rng_state(state["cuda_rng"], self.device)
                seconds = None
                if budget is not None:
                    left = max(0.0, budget - (self.run_seconds() - self._budget_start))
                    seconds = left * (0.4 if (stage == 1 and 2 in stages) else 1.0)
                (self.stage1 if stage == 1 else self.stage2)(seconds, state)
        except StopRequested:
            pass
        return self.meta

    def _common_state(self) -> dict:
        """What every save holds besides the stage's own state: RNGs and the clocks."""
        state = {"torch_rng": torch.get_rng_state(), "run_seconds": self.run_seconds(),
                 "budget_start": self._budget_start}
        if torch.device(self.device).type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def _optimizer(self, params, lr: float, state: dict) -> torch.optim.AdamW:
        decay = [p for p in params if p.ndim >= 2]
        rest = [p for p in params if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.tcfg.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
        if "optimizer" in state:
            opt.load_state_dict(state["optimizer"])
        return opt

    def _loop(self, stage: int, steps: int | None, lr: float, params, state: dict, seconds,
              step_fn, postfix, extra_state: Callable[[], dict]) -> int:
        """The optimisation loop of a stage; returns the number of steps done in all sessions."""
        step = int(state.get("step", 0))
        opt = self._optimizer(params, lr, state)
        budget = StepBudget(steps, self.tcfg.warmup, seconds, state.get("budget"))
        order = EpochOrder(len(self.windows), self.tcfg.batch_size, self.tcfg.seed, stage,
                           state.get("order"))

        def snapshot() -> dict:
            return {"stage": stage, "step": step, "optimizer": opt.state_dict(),
                    "budget": budget.state_dict(), "order": order.state_dict(),
                    **self._common_state(), **extra_state()}

        bar = tqdm(total=budget.total, initial=step, desc=f"stage {stage}",
                   disable=not (self.progress and self.ranks.lead), dynamic_ncols=True)
        ranks = self.ranks
        first = step
        with deferred_signals() as signals, bar:
            while step < budget.total and not ranks.any(budget.out_of_time()):
                for g in opt.param_groups:
                    g["lr"] = lr * budget.lr_factor(step)
                logs = step_fn(ranks.shard(order.next()), step, budget.total)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                budget.observe(step, first)
                budget.total = ranks.lead_int(budget.total)
                bar.total = budget.total
                bar.update(1)
                if step % self.tcfg.log_every == 0:
                    bar.set_postfix_str(postfix(logs))
                    self.meta["history"].setdefault(f"stage{stage}", []).append(
                        {"step": step, **{k: [round(x, 4) for x in v.tolist()] if v.ndim else
                                          round(float(v), 5) for k, v in logs.items()}})
                stop = ranks.any(bool(signals) or bool(self.on_step and
                                                       self.on_step(stage, step, logs)))
                if stop or time.perf_counter() - self._last_save > self.save_every:
                    self.save(snapshot())
                if stop:
                    self.stopped_at = (stage, step)
                    if ranks.lead:
                        print(f"stopped at stage {stage}, step {step}: {self.out} holds a "
                              f"resumable checkpoint (continue with --resume {self.out})",
                              file=sys.stderr)
                    break
        if signals:
            signal.raise_signal(signals[0])  # now the usual handler: KeyboardInterrupt etc.
        if self.stopped_at:
            raise StopRequested
        return step

    def stage1(self, seconds: float | None, state: dict | None = None) -> None:
        state, tcfg, vq = state or {}, self.tcfg, self.model.vqvae
        quant = vq.quant
        vq.train()
        revived = [int(state.get("codes_revived", 0))]
        net, ranks = self.ranks.wrap(vq), self.ranks
        if "usage" in state:
            quant.usage.copy_(state["usage"])
            quant.recent_residuals = state["recent_residuals"].to(self.device)

        def step_fn(idx, step, total):
            # revive codes unused since the last check (after the previous optimizer step,
            # never in the last 20% of the stage so the decoder can settle)
            if step and step % tcfg.dead_code_every == 0 and step < 0.8 * total:
                ranks.sum_(quant.usage)  # the dead set from every rank's counts; rank 0's picks
                n = quant.restart_dead_codes()
                ranks.from_lead_(quant.codebook.weight.data)
                revived[0] += ranks.lead_int(n)
            out = net(model_batch(self.windows, idx, self.device))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(vq.parameters(), tcfg.grad_clip)
            ppl = torch.tensor([perplexity(i, self.model.cfg.codebook_size)[0] for i in out.indices])
            return {"loss": out.loss.detach(), **{k: v.detach() for k, v in out.terms.items()},
                    "perplexity": ppl}

        def extra_state() -> dict:
            return {"codes_revived": revived[0], "usage": quant.usage.cpu().clone(),
                    "recent_residuals": quant.recent_residuals.cpu().clone()}

        steps = self._loop(1, tcfg.steps(1), tcfg.lr1, list(vq.parameters()), state, seconds,
                           step_fn, lambda l: f"loss {l['loss']:.4f} recon {l['recon']:.4f} "
                           f"perplexity/scale {' '.join(f'{p:.0f}' for p in l['perplexity'])}",
                           extra_state)
        ranks.check_same(vq, "stage 1")
        if not ranks.lead:
            return
        report = stage1_report(self.model, self.windows, self.device)
        if self.held is not None:
            report["heldout_recon_mse"] = stage1_report(self.model, self.held,
                                                        self.device)["recon_mse"]
        self.meta["stage1"] = {"steps": steps, "codes_revived": revived[0], **report}
        self.save({"stage": 2, "step": 0, **self._common_state()})
        if self.progress:
            held = (f", {report['heldout_recon_mse']:.5f} on held-out windows"
                    if self.held is not None else "")
            print(f"stage 1: {steps} steps, recon MSE {report['recon_mse']:.5f} (model scale)"
                  f"{held}, perplexity per scale {report['perplexity']}")

    def stage2(self, seconds: float | None, state: dict | None = None) -> None:
        state, tcfg, gpt, quant = state or {}, self.tcfg, self.model.gpt, self.model.vqvae.quant
        self.model.vqvae.eval()
        steps2 = tcfg.steps(2)
        tokens = Tokens(self.model, self.windows, self.device,
                        None if steps2 is None else steps2 * tcfg.batch_size)
        scales, device = self.model.cfg.scales, torch.device(self.device)
        # a resumed stage keeps the arithmetic it started with, wherever it continues
        precision = state.get("precision") or resolve_train_precision(tcfg.precision, device)
        if self.progress and self.ranks.lead:
            print(f"stage 2 arithmetic: {precision}"
                  f"{' autocast (fp32 weights and optimizer)' if precision == 'bf16' else ''}")
        gpt.train()
        net = self.ranks.wrap(gpt)

        def step_fn(idx, step, total):
            t = tokens(idx)
            with torch.no_grad():
                inputs = quant.teacher_inputs(split_scales(t, scales))
            with train_autocast(precision, device):
                logits = net(inputs)
            ce = per_scale_ce(logits.float(), t, scales)
            loss = (ce * torch.tensor(scales, device=ce.device)).sum() / sum(scales)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(gpt.parameters(), tcfg.grad_clip)
            return {"ce": loss.detach(), "ce_per_scale": ce.detach()}

        steps = self._loop(2, steps2, tcfg.lr2, list(gpt.parameters()), state, seconds,
                           step_fn, lambda l: f"ce {l['ce']:.3f} per scale "
                           f"{' '.join(f'{c:.2f}' for c in l['ce_per_scale'])}",
                           lambda: {"precision": precision})
        self.ranks.check_same(gpt, "stage 2")
        if not self.ranks.lead:
            return
        report = stage2_report(self.model, tokens)
        if self.held is not None:  # tokenized batch by batch, only the windows scored
            held = stage2_report(self.model, Tokens(self.model, self.held, self.device, 0))
            report |= {"heldout_ce_per_scale": held["ce_per_scale"],
                       "heldout_ce_mean_token": held["ce_mean_token"]}
        self.meta["stage2"] = {"steps": steps, "precision": precision, **report}
        support = ValueSupport.from_dict(self.meta["value_support"])
        if support.masses:
            support.calibrate(calibration_samples(self.model, self.device))
            self.meta["value_support"] = support.to_dict()
        self.save()
        if self.progress:
            print(f"stage 2: {steps} steps, cross-entropy per scale {report['ce_per_scale']}")
            if self.held is not None:
                print(f"stage 2: cross-entropy per token {report['ce_mean_token']:.3f} on training "
                      f"windows, {report['heldout_ce_mean_token']:.3f} on held-out windows")
