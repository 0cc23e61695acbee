"""Eager next-scale sampling: the plain-PyTorch reference path with a KV cache."""
from __future__ import annotations

import math

import numpy as np
import torch

from .decompose import area_resize
from .model import TimeMAR


def is_real_number(x) -> bool:
    return (isinstance(x, (int, float, np.integer, np.floating))
            and not isinstance(x, (bool, np.bool_)))


def is_integer(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_filters(temperature=1.0, top_k=None, top_p=None) -> dict:
    """Validated sampling filters as plain Python numbers, or a ValueError naming the bad one.

    temperature: a finite number > 0 (as it goes to 0, sampling goes to argmax; any tiny value
    works); top_k: None or an integer >= 1 (a value >= the codebook size keeps every code);
    top_p: None or a number in (0, 1]."""
    try:
        t = float(temperature) if is_real_number(temperature) else math.nan
    except OverflowError:  # an int too large for a float
        t = math.inf
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (not is_integer(top_k) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if top_p is not None and (not is_real_number(top_p) or not 0 < top_p <= 1):  # NaN fails too
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
    return {"temperature": t, "top_k": None if top_k is None else int(top_k),
            "top_p": None if top_p is None else float(top_p)}


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Temperature, then top-k (ties at the k-th value kept), then top-p (nucleus) on (..., V).

    With a temperature other than 1 the logits are first shifted so each row's maximum is 0
    (softmax is unchanged by the shift): the scaled logits cannot overflow, and a temperature
    too small to divide by in the logits' dtype gives the limit, argmax (ties kept). A top_k of
    at least V keeps every code."""
    f = check_filters(temperature, top_k, top_p)
    temperature, top_k, top_p = f["temperature"], f["top_k"], f["top_p"]
    if temperature != 1:
        shifted = logits - logits.amax(-1, keepdim=True)
        if temperature < torch.finfo(logits.dtype).tiny:  # the division would underflow / NaN
            logits = shifted.masked_fill(shifted < 0, float("-inf"))
        else:
            logits = shifted / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already enough
        drop = torch.zeros_like(drop).scatter(-1, order, drop)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(logits: torch.Tensor, generator: torch.Generator | None, **filters) -> torch.Tensor:
    """One index per position of logits (B, s, V), drawn from the filtered softmax."""
    B, s, V = logits.shape
    probs = filter_logits(logits, **filters).softmax(-1).view(-1, V)
    return torch.multinomial(probs, 1, generator=generator).view(B, s)


@torch.no_grad()
def generate(model: TimeMAR, batch: int, generator: torch.Generator | None = None,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             return_indices: bool = False):
    """Sample `batch` windows (B, T, C) in the model's [-1, 1] scale, scale by scale (token by
    token at causal scales and for a one-map model); return_indices: also the token maps, one
    per scale."""
    if not is_integer(batch) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    filters = check_filters(temperature, top_k, top_p)
    gpt, quant = model.gpt, model.vqvae.quant
    scales = model.cfg.scales
    gpt.setup_cache(batch)
    try:
        if model.cfg.multiscale:
            f_hat, indices, step = None, [], 0
            whole = len(scales) - model.cfg.causal_scales
            for k, s in enumerate(scales):
                coarse = None if k == 0 else area_resize(f_hat, s).transpose(1, 2)
                if k < whole:  # the whole map at once
                    inputs = None if k == 0 else quant.gpt_inputs(coarse)
                    idx = sample_tokens(gpt.step(inputs, step, batch), generator, **filters)
                    step += 1
                else:  # token by token, each input carrying the previous token's code
                    previous, tokens = torch.zeros_like(coarse[:, :1]), []
                    for t in range(s):
                        inputs = quant.gpt_inputs(coarse[:, t:t + 1], previous)
                        tokens.append(sample_tokens(gpt.step(inputs, step, batch), generator,
                                                    **filters))
                        previous, step = quant.codebook(tokens[-1]), step + 1
                    idx = torch.cat(tokens, 1)
                h = quant.embed(idx, k)
                f_hat = h if f_hat is None else f_hat.add_(h)
                indices.append(idx)
        else:  # one map in raster order: each token's input is the previous token's code
            inputs, tokens = None, []
            for t in range(scales[0]):
                tokens.append(sample_tokens(gpt.step(inputs, t, batch), generator, **filters))
                inputs = quant.codebook(tokens[-1])
            indices = [torch.cat(tokens, 1)]
            f_hat = quant.embed(indices[0], 0)
    finally:
        gpt.setup_cache(None)
    x = model.vqvae.decode(f_hat).clamp_(-1, 1)
    return (x, indices) if return_indices else x
