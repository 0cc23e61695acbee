"""What a training stage draws and when: its step budget, learning-rate schedule and data order,
each with a state that a checkpoint stores so a resumed run continues exactly."""
from __future__ import annotations

import math
import time

import torch


class StepBudget:
    """Total steps of a stage, fitted to a time budget once the step time is known: a requested
    total shrinks to what fits; with none (total None) the stage runs as many steps as fit.

    The learning rate warms up linearly over `warmup` steps, capped at a tenth of the (possibly
    shrunk) total so a short run does not spend itself warming up, then decays by a cosine to 10%.
    Until the step time is known (step 20), an open-ended stage schedules as if it had
    10 * warmup steps (at least 100, so it reaches that first timing even without a warm-up).
    """

    def __init__(self, total: int | None, warmup: int, seconds: float | None,
                 state: dict | None = None):
        if total is None and seconds is None:
            raise ValueError("a stage without a step count needs a time budget")
        self.requested = total
        self.total = max(10 * warmup, 100) if total is None else total
        self.max_warmup, self.seconds = warmup, seconds
        elapsed = 0.0
        if state:
            self.total, self.seconds, elapsed = state["total"], state["seconds"], state["elapsed"]
        self.t0 = time.perf_counter() - elapsed
        self._session_start = elapsed

    @property
    def warmup(self) -> int:
        return min(self.max_warmup, max(1, self.total // 10))

    def lr_factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        frac = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def observe(self, step: int, first_step: int) -> None:
        """At 20 steps into a session and every 200 after, set the total to what fits in the time
        budget at this session's average speed, capped by the requested count if any."""
        done = step - first_step
        if self.seconds is None or done < 20 or (done != 20 and done % 200):
            return
        per_step = (self.elapsed() - self._session_start) / done
        fits = step + int((self.seconds - self.elapsed()) / per_step)
        self.total = max(step, fits if self.requested is None else min(self.requested, fits))

    def out_of_time(self) -> bool:
        return self.seconds is not None and self.elapsed() > self.seconds

    def state_dict(self) -> dict:
        return {"total": self.total, "seconds": self.seconds, "elapsed": self.elapsed()}


class EpochOrder:
    """Shuffled mini-batches of window indices, drop-last, a fresh permutation each epoch.

    Epoch e's permutation depends on (seed, stream, e) alone, so the position (epoch, batch) is
    the whole state: a resumed run draws exactly the batches the uninterrupted run would have."""

    def __init__(self, n: int, batch: int, seed: int, stream: int, state: dict | None = None):
        self.n, self.batch, self.seed, self.stream = n, min(batch, n), seed, stream
        self.epoch, self.pos = (state["epoch"], state["pos"]) if state else (0, 0)
        self._perm = self._permutation(self.epoch)

    def _permutation(self, epoch: int) -> torch.Tensor:
        key = ((self.seed * 1_000_003 + self.stream) * 1_000_003 + epoch) % 2**63
        gen = torch.Generator().manual_seed(key)
        return torch.randperm(self.n, generator=gen)

    def next(self) -> torch.Tensor:
        if self.pos + self.batch > self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        idx = self._perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return idx

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}
