"""Shared helpers for the evaluation metrics: input validation, seeding, progress bars,
and a batched TF1-style GRU used by the discriminative and predictive scores.

The GRU here stacks R independent networks (one per repeat) along a leading axis and runs
them with batched matmuls, so the 5 protocol repeats cost roughly one network's Python/
dispatch overhead.  Adam is element-wise and the per-repeat losses are summed, so every
repeat is trained exactly as if it were alone (up to floating-point rounding).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Sequence

import numpy as np
import torch

__all__ = ["validate_pair", "as_device", "progress_bar", "StackedGRU", "one_blas_thread"]


def one_blas_thread():
    """Limit BLAS/OpenMP pools to one thread inside a `with` block (no-op without threadpoolctl).

    Small dense work (sqrtm of 320 x 320, t-SNE) takes milliseconds on one thread but can take
    seconds with several spinning threads on a busy machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1)


def validate_pair(real, fake, *, min_n: int = 1, min_t: int = 1, min_c: int = 1,
                  metric: str = "metric") -> tuple[np.ndarray, np.ndarray]:
    """Check two (N, T, C) arrays and return them as float64 numpy arrays.

    Raises ValueError with a message naming the metric and the offending input when an array
    is not 3-D, when T or C differ, when N/T/C are too small, or when a value is NaN/inf.
    Warns (does not fail) when values are clearly outside [0, 1]: the metrics assume
    [0, 1]-scaled windows, as in the protocol.
    """
    out = []
    for name, x in (("real", real), ("fake", fake)):
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        try:
            x = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{metric}: `{name}` cannot be converted to a float array ({exc})") from None
        if x.ndim != 3:
            raise ValueError(f"{metric}: `{name}` must be a 3-D array (N, T, C); got shape {x.shape}")
        n, t, c = x.shape
        if n < min_n:
            raise ValueError(f"{metric}: `{name}` needs at least {min_n} windows; got N={n}")
        if t < min_t:
            raise ValueError(f"{metric}: `{name}` needs windows of length >= {min_t}; got T={t}")
        if c < min_c:
            raise ValueError(f"{metric}: `{name}` needs at least {min_c} channel(s); got C={c}")
        if not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(f"{metric}: `{name}` contains NaN or inf (first at index {tuple(int(i) for i in bad)})")
        if x.min() < -0.05 or x.max() > 1.05:
            warnings.warn(f"{metric}: `{name}` has values in [{x.min():.3g}, {x.max():.3g}]; the metrics "
                          "expect windows min-max scaled to [0, 1]", stacklevel=3)
        out.append(x)
    real, fake = out
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"{metric}: `real` and `fake` must have the same (T, C); got "
                         f"{real.shape[1:]} and {fake.shape[1:]}")
    return real, fake


def as_device(device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    return dev


def progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def hidden_size(channels: int) -> int:
    """Protocol hidden size int(C/2), guarded to at least 1."""
    return max(1, int(channels / 2))


def _glorot(gen: torch.Generator, fan_in: int, fan_out: int) -> torch.Tensor:
    lim = math.sqrt(6.0 / (fan_in + fan_out))
    return (torch.rand(fan_in, fan_out, generator=gen, dtype=torch.float32) * 2.0 - 1.0) * lim


class StackedGRU(torch.nn.Module):
    """R independent one-layer TF1-style GRU cells + a linear head, stacked along dim 0.

    Cell (TF1 ``GRUCell``): r, u = sigmoid([x, h] Wg + bg); c = tanh([x, r*h] Wc + bc);
    h' = u*h + (1-u)*c.  Init as TF1: Glorot-uniform on the full [in+H, 2H] and [in+H, H]
    kernels, gate bias 1.0, candidate bias 0; head Glorot kernel, zero bias (TF
    ``fully_connected``).  Repeat r is initialised from ``torch.Generator().manual_seed(seeds[r])``.
    """

    def __init__(self, seeds: Sequence[int], in_dim: int, hidden: int):
        super().__init__()
        wx, ug, uc, b, wo = [], [], [], [], []
        h = hidden
        for s in seeds:
            g = torch.Generator().manual_seed(int(s))
            gate = _glorot(g, in_dim + h, 2 * h)
            cand = _glorot(g, in_dim + h, h)
            head = _glorot(g, h, 1)
            wx.append(torch.cat([gate[:in_dim], cand[:in_dim]], dim=1))   # (in, 3H)
            ug.append(gate[in_dim:])                                       # (H, 2H)
            uc.append(cand[in_dim:])                                       # (H, H)
            b.append(torch.cat([torch.ones(1, 2 * h), torch.zeros(1, h)], dim=1))
            wo.append(head)
        self.hidden = h
        self.wx = torch.nn.Parameter(torch.stack(wx))   # (R, in, 3H)
        self.ug = torch.nn.Parameter(torch.stack(ug))   # (R, H, 2H)
        self.uc = torch.nn.Parameter(torch.stack(uc))   # (R, H, H)
        self.b = torch.nn.Parameter(torch.stack(b))     # (R, 1, 3H)
        self.wo = torch.nn.Parameter(torch.stack(wo))   # (R, H, 1)
        self.bo = torch.nn.Parameter(torch.zeros(len(seeds), 1, 1))

    def states(self, x: torch.Tensor, all_steps: bool) -> torch.Tensor:
        """x: (R, B, T, in) or (B, T, in) shared by all repeats.

        Returns the final state (R, B, H) or, with ``all_steps``, every state (R, B, T, H).
        """
        R, H = self.wx.shape[0], self.hidden
        if x.dim() == 3:                                   # same inputs for every repeat
            B, T, _ = x.shape
            xw = torch.einsum("btd,rdk->trbk", x, self.wx) + self.b.unsqueeze(0)
        else:
            _, B, T, d = x.shape
            xw = torch.baddbmm(self.b, x.reshape(R, B * T, d), self.wx)
            xw = xw.view(R, B, T, 3 * H).permute(2, 0, 1, 3).contiguous()  # (T, R, B, 3H)
        h = x.new_zeros(R, B, H)
        hs = []
        for t in range(T):
            xt = xw[t]
            gates = torch.sigmoid(torch.baddbmm(xt[..., :2 * H], h, self.ug))
            r, u = gates[..., :H], gates[..., H:]
            c = torch.tanh(torch.baddbmm(xt[..., 2 * H:], r * h, self.uc))
            h = torch.lerp(c, h, u)                        # u*h + (1-u)*c
            if all_steps:
                hs.append(h)
        return torch.stack(hs, dim=2) if all_steps else h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Linear head to one logit: (R, B, H) -> (R, B) or (R, B, T, H) -> (R, B, T)."""
        shp = h.shape
        out = torch.baddbmm(self.bo, h.reshape(shp[0], -1, shp[-1]), self.wo)
        return out.view(shp[:-1])
