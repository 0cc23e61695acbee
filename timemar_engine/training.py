"""Two-stage training in plain PyTorch: stage 1 the VQ-VAE, stage 2 the scale GPT."""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import save_checkpoint
from .config import TrainConfig
from .data import MinMaxScaler
from .model import TimeMAR
from .quantizer import perplexity

SAVE_EVERY_S = 120.0


class StepBudget:
    """Total steps for a stage, shrunk once the step time is known so a time budget is kept;
    the learning-rate schedule (linear warm-up, cosine decay to 10%) follows the shrunk total."""

    def __init__(self, total: int, warmup: int, seconds: float | None):
        self.requested = self.total = total
        self.warmup, self.seconds = warmup, seconds
        self.t0 = time.perf_counter()

    def lr_factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        frac = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    def observe(self, step: int, first_step: int) -> None:
        """At step 20 and every 200 steps after, cap the total by what fits in the time budget
        at the average speed so far (it can grow back to the requested count)."""
        done = step - first_step
        if self.seconds is None or done < 20 or (done != 20 and done % 200):
            return
        elapsed = time.perf_counter() - self.t0
        fits = step + int((self.seconds - elapsed) / (elapsed / done))
        self.total = max(step, min(self.requested, fits))

    def out_of_time(self) -> bool:
        return self.seconds is not None and time.perf_counter() - self.t0 > self.seconds


def to_model_scale(windows_unit: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(windows_unit, dtype=np.float32)) * 2 - 1


def batches(n: int, batch: int, gen: torch.Generator):
    """Endless shuffled mini-batch indices (drop_last, reshuffled each epoch)."""
    batch = min(batch, n)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield perm[i:i + batch]


@torch.no_grad()
def stage1_report(model: TimeMAR, data: torch.Tensor, device, batch: int = 1024) -> dict:
    """Reconstruction MSE (model scale) and per-scale codebook perplexity / usage on data."""
    vq = model.vqvae.eval()
    se, idx_all = 0.0, [[] for _ in model.cfg.scales]
    for i in range(0, len(data), batch):
        x = data[i:i + batch].to(device)
        f = vq.latent(x)
        indices = vq.quant.encode(f)
        x_hat = vq.decode(vq.quant.decode_indices(indices))
        se += float(((x_hat - x) ** 2).sum())
        for k, idx in enumerate(indices):
            idx_all[k].append(idx.cpu())
    stats = [perplexity(torch.cat(v), model.cfg.codebook_size) for v in idx_all]
    return {"recon_mse": se / data.numel(),
            "perplexity": [round(p, 2) for p, _ in stats],
            "usage": [round(u, 3) for _, u in stats]}


@torch.no_grad()
def tokenize(model: TimeMAR, data: torch.Tensor, device, batch: int = 1024) -> torch.Tensor:
    """All windows as flat token sequences (N, L)."""
    vq = model.vqvae.eval()
    out = [torch.cat(vq.tokenize(data[i:i + batch].to(device)), 1).cpu()
           for i in range(0, len(data), batch)]
    return torch.cat(out)


def split_scales(tokens: torch.Tensor, scales: tuple[int, ...]) -> list[torch.Tensor]:
    return list(tokens.split(list(scales), dim=1))


def per_scale_ce(logits: torch.Tensor, targets: torch.Tensor, scales: tuple[int, ...]) -> torch.Tensor:
    """Mean cross-entropy of each scale (K,)."""
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, L)
    return torch.stack([c.mean() for c in ce.split(list(scales), dim=1)])


@torch.no_grad()
def stage2_report(model: TimeMAR, tokens: torch.Tensor, device, batch: int = 512) -> dict:
    model.gpt.eval()
    scales, total = model.cfg.scales, torch.zeros(len(model.cfg.scales))
    for i in range(0, len(tokens), batch):
        t = tokens[i:i + batch].to(device)
        inputs = model.vqvae.quant.teacher_inputs(split_scales(t, scales))
        total += per_scale_ce(model.gpt(inputs), t, scales).cpu() * len(t)
    ce = (total / len(tokens)).tolist()
    return {"ce_per_scale": [round(c, 4) for c in ce],
            "ce_mean_token": float(sum(c * s for c, s in zip(ce, scales)) / sum(scales))}


class Trainer:
    """Runs the stages, saves atomically to `out` at stage ends and every few minutes."""

    def __init__(self, model: TimeMAR, windows_unit: np.ndarray, scaler: MinMaxScaler,
                 channels: list[str], tcfg: TrainConfig, out: str | Path, device,
                 meta: dict | None = None, progress: bool = True):
        self.model, self.tcfg, self.out, self.device = model.to(device), tcfg, Path(out), device
        self.data = to_model_scale(windows_unit)
        self.scaler, self.channels, self.progress = scaler, channels, progress
        self.meta = meta or {}
        self.meta.setdefault("history", {})
        self.meta["train_config"] = asdict(tcfg)
        self.meta["n_windows"] = len(self.data)
        self.gen = torch.Generator().manual_seed(tcfg.seed)
        self._last_save = time.perf_counter()

    def save(self, train_state: dict | None = None) -> None:
        save_checkpoint(self.out, self.model, self.scaler, self.channels, self.meta, train_state)
        self._last_save = time.perf_counter()

    def run(self, stages: tuple[int, ...], resume: dict | None = None) -> dict:
        budget = self.tcfg.max_minutes * 60 if self.tcfg.max_minutes else None
        t0 = time.perf_counter()
        for stage in stages:
            if resume and resume.get("stage", 0) > stage:
                continue
            seconds = None
            if budget is not None:
                left = budget - (time.perf_counter() - t0)
                seconds = left * (0.4 if (stage == 1 and len(stages) > 1) else 1.0)
            state = resume if resume and resume.get("stage") == stage else None
            (self.stage1 if stage == 1 else self.stage2)(seconds, state)
        return self.meta

    def _optimizer(self, params, lr: float, state: dict | None) -> torch.optim.AdamW:
        decay = [p for p in params if p.ndim >= 2]
        rest = [p for p in params if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.tcfg.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
        if state and "optimizer" in state:
            opt.load_state_dict(state["optimizer"])
        return opt

    def _loop(self, stage: int, steps: int, lr: float, params, state, seconds, step_fn, postfix):
        start = int(state["step"]) if state else 0
        if state and "rng" in state:
            self.gen.set_state(state["rng"])
        opt = self._optimizer(params, lr, state)
        budget = StepBudget(steps, self.tcfg.warmup, seconds)
        bar = tqdm(total=steps, initial=start, desc=f"stage {stage}", disable=not self.progress,
                   dynamic_ncols=True)
        it = batches(len(self.data), self.tcfg.batch_size, self.gen)
        step = start
        while step < budget.total and not budget.out_of_time():
            for g in opt.param_groups:
                g["lr"] = lr * budget.lr_factor(step)
            logs = step_fn(next(it), step, budget.total)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            budget.observe(step, start)
            bar.total = budget.total
            bar.update(1)
            if step % self.tcfg.log_every == 0:
                bar.set_postfix_str(postfix(logs))
                self.meta["history"].setdefault(f"stage{stage}", []).append(
                    {"step": step, **{k: [round(x, 4) for x in v.tolist()] if v.ndim else
                                      round(float(v), 5) for k, v in logs.items()}})
            if time.perf_counter() - self._last_save > SAVE_EVERY_S:
                self.save({"stage": stage, "step": step, "optimizer": opt.state_dict(),
                           "rng": self.gen.get_state()})
        bar.close()
        return step

    def stage1(self, seconds: float | None, state: dict | None) -> None:
        tcfg, vq = self.tcfg, self.model.vqvae
        vq.train()
        revived = [0]

        def step_fn(idx, step, total):
            # revive codes unused since the last check (after the previous optimizer step,
            # never in the last 20% of the stage so the decoder can settle)
            if step and step % tcfg.dead_code_every == 0 and step < 0.8 * total:
                revived[0] += vq.quant.restart_dead_codes()
            out = vq(self.data[idx].to(self.device))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(vq.parameters(), tcfg.grad_clip)
            ppl = torch.tensor([perplexity(i, self.model.cfg.codebook_size)[0] for i in out.indices])
            return {"loss": out.loss.detach(), **{k: v.detach() for k, v in out.terms.items()},
                    "perplexity": ppl}

        steps = self._loop(1, tcfg.stage1_steps, tcfg.lr1, list(vq.parameters()), state, seconds,
                           step_fn, lambda l: f"loss {l['loss']:.4f} recon {l['recon']:.4f} "
                           f"perplexity/scale {' '.join(f'{p:.0f}' for p in l['perplexity'])}")
        report = stage1_report(self.model, self.data, self.device)
        self.meta["stage1"] = {"steps": steps, "codes_revived": revived[0], **report}
        self.save({"stage": 2, "step": 0})
        if self.progress:
            print(f"stage 1: {steps} steps, recon MSE {report['recon_mse']:.5f} (model scale), "
                  f"perplexity per scale {report['perplexity']}")

    def stage2(self, seconds: float | None, state: dict | None) -> None:
        tcfg, gpt, quant = self.tcfg, self.model.gpt, self.model.vqvae.quant
        self.model.vqvae.eval()
        tokens = tokenize(self.model, self.data, self.device)
        scales = self.model.cfg.scales
        gpt.train()

        def step_fn(idx, step, total):
            t = tokens[idx].to(self.device)
            with torch.no_grad():
                inputs = quant.teacher_inputs(split_scales(t, scales))
            ce = per_scale_ce(gpt(inputs), t, scales)
            loss = (ce * torch.tensor(scales, device=ce.device)).sum() / sum(scales)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(gpt.parameters(), tcfg.grad_clip)
            return {"ce": loss.detach(), "ce_per_scale": ce.detach()}

        steps = self._loop(2, tcfg.stage2_steps, tcfg.lr2, list(gpt.parameters()), state, seconds,
                           step_fn, lambda l: f"ce {l['ce']:.3f} per scale "
                           f"{' '.join(f'{c:.2f}' for c in l['ce_per_scale'])}")
        report = stage2_report(self.model, tokens, self.device)
        self.meta["stage2"] = {"steps": steps, **report}
        self.save()
        if self.progress:
            print(f"stage 2: {steps} steps, cross-entropy per scale {report['ce_per_scale']}")
