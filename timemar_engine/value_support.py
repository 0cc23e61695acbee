"""Channels whose values sit on a few levels or pile up at a bound (on/off lights, counts,
irradiance that is exactly 0 at night): found in the training data, restored in the samples.

The decoder emits continuous values, so a channel that is exactly 0 half of the time comes out
*near* 0 instead, and a channel of eight levels comes out anywhere between them. `ValueSupport`
keeps, per channel, in unit scale ([0, 1], the scaler's):
- levels: every distinct value of a channel that has at most MAX_LEVELS of them; generated
  values snap to the nearest level;
- point masses: the share of values exactly at the channel's minimum (unit 0) or maximum
  (unit 1), when at least MIN_MASS; after training, `calibrate` sets a threshold from the model's
  own samples so that the generated share at the bound equals the data's (values at or beyond
  the threshold snap to the bound).
Samples in 'data' and 'unit' scale are snapped (`Engine`), 'model' scale is the raw output."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_LEVELS = 32
MIN_MASS = 0.05


@dataclass
class ValueSupport:
    levels: dict[int, np.ndarray] = field(default_factory=dict)  # channel -> sorted unit values
    masses: dict[tuple[int, int], float] = field(default_factory=dict)  # (channel, 0|1) -> share
    thresholds: dict[tuple[int, int], float] = field(default_factory=dict)  # set by calibrate

    def __bool__(self) -> bool:
        return bool(self.levels or self.masses)

    @classmethod
    def fit(cls, unit: np.ndarray, chunk_rows: int = 1 << 16) -> "ValueSupport":
        """Levels and point masses of a unit-scaled series (rows, C) or windows (n, T, C), read
        chunk by chunk (no copy of the whole array)."""
        values = unit.reshape(-1, unit.shape[-1])
        C, rows = values.shape[1], len(values)
        distinct: list[set | None] = [set() for _ in range(C)]
        at_bound = np.zeros((C, 2), dtype=np.int64)
        for start in range(0, rows, chunk_rows):
            chunk = np.asarray(values[start:start + chunk_rows])
            at_bound[:, 0] += (chunk == 0).sum(0)
            at_bound[:, 1] += (chunk == 1).sum(0)
            for c in range(C):
                if distinct[c] is not None:
                    distinct[c].update(np.unique(chunk[:, c]).tolist())
                    if len(distinct[c]) > MAX_LEVELS:
                        distinct[c] = None
        levels = {c: np.array(sorted(d)) for c, d in enumerate(distinct)
                  if d is not None and len(d) > 1}
        masses = {(c, b): float(at_bound[c, b] / rows) for c in range(C) for b in (0, 1)
                  if c not in levels and at_bound[c, b] >= MIN_MASS * rows}
        return cls(levels, masses)

    def calibrate(self, samples_unit: np.ndarray) -> None:
        """Thresholds for the point masses from the model's unsnapped samples (n, T, C), unit
        scale: the generated share at or beyond each threshold is the data's share."""
        flat = samples_unit.reshape(-1, samples_unit.shape[-1])
        self.thresholds = {
            (c, b): float(np.quantile(flat[:, c], share if b == 0 else 1 - share))
            for (c, b), share in self.masses.items()}

    def snap(self, x: np.ndarray, lo: np.ndarray, span: np.ndarray) -> np.ndarray:
        """x (..., C) in a scale where unit value u is lo + u * span (per channel), snapped in
        place: levels to the nearest, point masses beyond their thresholds to the bound."""
        for c, lv in self.levels.items():
            levels = (lo[c] + lv * span[c]).astype(x.dtype)
            col = x[..., c]
            i = np.searchsorted(levels, col).clip(1, len(levels) - 1)
            below, above = levels[i - 1], levels[i]
            col[...] = np.where(col - below <= above - col, below, above)
        for (c, b), t in self.thresholds.items():
            col, bound, edge = x[..., c], lo[c] + b * span[c], lo[c] + t * span[c]
            col[col <= edge if b == 0 else col >= edge] = bound
        return x

    def to_dict(self) -> dict:
        """Plain lists and numbers (a checkpoint loads it with weights_only)."""
        return {"levels": {str(c): lv.tolist() for c, lv in self.levels.items()},
                "masses": [[c, b, s] for (c, b), s in self.masses.items()],
                "thresholds": [[c, b, t] for (c, b), t in self.thresholds.items()]}

    @classmethod
    def from_dict(cls, d: dict | None) -> "ValueSupport":
        if not d:
            return cls()
        return cls({int(c): np.asarray(lv, dtype=np.float64) for c, lv in d["levels"].items()},
                   {(int(c), int(b)): float(s) for c, b, s in d["masses"]},
                   {(int(c), int(b)): float(t) for c, b, t in d["thresholds"]})

    def describe(self, channels: list[str]) -> list[str]:
        """One line per channel it touches, for `info`."""
        lines = [f"{channels[c]}: {len(lv)} levels" for c, lv in self.levels.items()]
        for (c, b), share in self.masses.items():
            where = "minimum" if b == 0 else "maximum"
            state = "calibrated" if (c, b) in self.thresholds else "not calibrated"
            lines.append(f"{channels[c]}: {share:.0%} at its {where} ({state})")
        return lines
