"""Eager next-scale sampling: the plain-PyTorch reference path with a KV cache."""
from __future__ import annotations

import torch

from .decompose import area_resize
from .model import TimeMAR


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Temperature, then top-k (ties at the k-th value kept), then top-p (nucleus) on (..., V)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if temperature != 1:
        logits = logits / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_p < 1:
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
    """Sample `batch` windows (B, T, C) in the model's [-1, 1] scale, scale by scale."""
    gpt, quant = model.gpt, model.vqvae.quant
    scales = model.cfg.scales
    gpt.setup_cache(batch)
    try:
        f_hat, inputs, indices = None, None, []
        for k, s in enumerate(scales):
            logits = gpt.step(inputs, k, batch)
            idx = sample_tokens(logits, generator, temperature=temperature, top_k=top_k, top_p=top_p)
            h = quant.embed(idx, k)
            f_hat = h if f_hat is None else f_hat.add_(h)
            indices.append(idx)
            if k + 1 < len(scales):
                inputs = area_resize(f_hat, scales[k + 1]).transpose(1, 2)
    finally:
        gpt.setup_cache(None)
    x = model.vqvae.decode(f_hat).clamp_(-1, 1)
    return (x, indices) if return_indices else x
