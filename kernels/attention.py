"""Block-causal multi-scale attention (FlashAttention-2 forward) in Triton.

Tokens of K scales of lengths ``scales`` are flattened into L = sum(scales) positions; query i (scale
a) may attend to key j (scale b) iff b <= a. Scale ids never decrease along the sequence, so the
allowed keys of query i are a *prefix* [0, limit[i]) where limit[i] is the end of i's scale. One
program handles a tile of BLOCK_M queries of one (batch, head): it streams key tiles up to the largest
limit of the tile, with no mask on tiles below the smallest limit and ``j < limit[i]`` on the others.

Cached mode (sampling one scale with a KV cache) is the same kernel with limit = kv_len for every query.

Importing this module needs ``triton``; set TRITON_INTERPRET=1 *before* the import to run the kernel
on CPU tensors (tests). bf16 ``tl.dot`` is wrong in the interpreter, test fp32/fp16 there.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..gpt import block_causal_mask as model_mask

__all__ = [
    "block_causal_attention",
    "cached_attention",
    "block_causal_attention_reference",
    "cached_attention_reference",
    "block_causal_mask",
    "scale_limits",
]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_HEAD_DIM = 128
_LOG2E = 1.4426950408889634
# The interpreter runs CPU tensors; compiled kernels need CUDA ones. Decided when @triton.jit runs.
_INTERPRETED: bool


# --------------------------------------------------------------------------------------------- kernel
@triton.jit
def _attn_tile(acc, l_i, m_i, q, K, V, lim, start_n, Lk, s_kn, s_kd, s_vn, s_vd, qk_scale,
               offs_n, offs_d, d_ok, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, IEEE: tl.constexpr):
    """One online-softmax step over keys [start_n, start_n + BLOCK_N); MASKED applies j < lim[i]."""
    cols = start_n + offs_n
    if MASKED:
        kv_mask = (cols[:, None] < Lk) & d_ok[None, :]
    else:
        kv_mask = d_ok[None, :]
    k = tl.load(K + cols[:, None] * s_kn + offs_d[None, :] * s_kd, mask=kv_mask, other=0.0)
    v = tl.load(V + cols[:, None] * s_vn + offs_d[None, :] * s_vd, mask=kv_mask, other=0.0)
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = s * qk_scale  # sm_scale * log2(e): exp2 below
    if MASKED:
        s = tl.where(cols[None, :] < lim[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd(
    Q, K, V, O, LIMIT,
    s_qb, s_qh, s_qm, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vd,
    s_ob, s_oh, s_om, s_od,
    H, Lq, Lk, n_m_tiles, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_LIMIT: tl.constexpr, IEEE: tl.constexpr,
):
    # 1-D grid (no 65535 cap on B*H); query tiles of one (b, h) are adjacent, heaviest (last) first.
    pid = tl.program_id(0)
    pid_bh = pid // n_m_tiles
    pid_m = n_m_tiles - 1 - pid % n_m_tiles
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    Q += b * s_qb + h * s_qh
    K += b * s_kb + h * s_kh
    V += b * s_vb + h * s_vh
    O += b * s_ob + h * s_oh

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Lq
    d_ok = offs_d < HEAD_DIM

    # Prefix limits: key j is visible to query i iff j < lim[i]. Padded rows get the tile max so they
    # never see an empty row (every real limit is >= 1, so key 0 is always visible).
    if HAS_LIMIT:
        lim = tl.load(LIMIT + offs_m, mask=m_ok, other=0)
        hi = tl.max(lim, axis=0)
        lim = tl.where(m_ok, lim, hi)
        lo = tl.min(lim, axis=0)
    else:
        lim = tl.zeros([BLOCK_M], dtype=tl.int32) + Lk
        hi = Lk
        lo = Lk

    q = tl.load(Q + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd,
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Full tiles (every key visible to every row: no compare), then boundary tiles up to the tile max.
    # `while` rather than `range`: the (3.6) interpreter rejects loaded scalars as range bounds.
    start_n = 0
    while start_n + BLOCK_N <= lo:
        acc, l_i, m_i = _attn_tile(acc, l_i, m_i, q, K, V, lim, start_n, Lk, s_kn, s_kd, s_vn, s_vd,
                                   qk_scale, offs_n, offs_d, d_ok, BLOCK_N, False, IEEE)
        start_n += BLOCK_N
    while start_n < hi:
        acc, l_i, m_i = _attn_tile(acc, l_i, m_i, q, K, V, lim, start_n, Lk, s_kn, s_kd, s_vn, s_vd,
                                   qk_scale, offs_n, offs_d, d_ok, BLOCK_N, True, IEEE)
        start_n += BLOCK_N

    out = acc / l_i[:, None]
    tl.store(O + offs_m[:, None] * s_om + offs_d[None, :] * s_od, out.to(O.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])


_INTERPRETED = type(_attn_fwd).__name__ == "InterpretedFunction"


# ------------------------------------------------------------------------------------------- launcher
@functools.lru_cache(maxsize=64)
def scale_limits(scales: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """int32 (L,): limit[i] = end offset of query i's scale (query i sees keys j < limit[i])."""
    ends = torch.tensor(scales, dtype=torch.int64).cumsum(0)
    lim = torch.repeat_interleave(ends, torch.tensor(scales, dtype=torch.int64))
    return lim.to(device=device, dtype=torch.int32)


def _check_scales(scales: Sequence[int], L: int) -> tuple[int, ...]:
    sc = tuple(int(s) for s in scales)
    if not sc or any(s < 1 for s in sc):
        raise ValueError(f"scales must be a non-empty sequence of positive ints, got {tuple(scales)}")
    if sum(sc) != L:
        raise ValueError(f"sum(scales) = {sum(sc)} does not match the sequence length L = {L}")
    return sc


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_name: str) -> None:
    for name, t in (("q", q), (f"k{kv_name}", k), (f"v{kv_name}", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (B, H, L, D), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name} dtype {t.dtype} not supported (float32, float16, bfloat16)")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"dtype mismatch: q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"device mismatch: q {q.device}, k {k.device}, v {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k{kv_name} {tuple(k.shape)} and v{kv_name} {tuple(v.shape)} differ in shape")
    B, H, _, D = q.shape
    if (k.shape[0], k.shape[1], k.shape[3]) != (B, H, D):
        raise ValueError(f"q {tuple(q.shape)} and k{kv_name} {tuple(k.shape)} disagree on (B, H, D)")
    if not 1 <= D <= _MAX_HEAD_DIM:
        raise ValueError(f"head dim {D} not supported (1..{_MAX_HEAD_DIM})")
    if _INTERPRETED and q.device.type != "cpu":
        raise ValueError(f"TRITON_INTERPRET=1 was set at import: the kernel takes CPU tensors, got {q.device}")
    if not _INTERPRETED and q.device.type != "cuda":
        raise ValueError(f"tensors are on {q.device}; the compiled kernel needs CUDA tensors "
                         "(set TRITON_INTERPRET=1 before importing to run on CPU)")


def _sm_scale(sm_scale: float | None, D: int) -> float:
    if sm_scale is None:
        return 1.0 / math.sqrt(D)
    if not (math.isfinite(sm_scale) and sm_scale > 0):
        raise ValueError(f"sm_scale must be a positive finite float, got {sm_scale}")
    return float(sm_scale)


def _block(n: int, cap: int) -> int:
    """Tile size for a dimension of length n: a power of two in [16, cap] (tl.dot needs >= 16)."""
    return max(16, min(cap, triton.next_power_of_2(n)))


def _launch(q, k, v, out, limit, Lk: int, sm_scale: float) -> torch.Tensor:
    B, H, Lq, D = q.shape
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype} on {q.device}, got "
                         f"{tuple(out.shape)} {out.dtype} on {out.device}")
    if B * H * Lq == 0:
        return out
    BLOCK_M = 64 if Lq >= 128 else _block(Lq, 32)
    BLOCK_N = _block(Lk, 64)
    BLOCK_D = max(16, triton.next_power_of_2(D))
    n_m = triton.cdiv(Lq, BLOCK_M)
    _attn_fwd[(n_m * B * H,)](
        q, k, v, out, limit if limit is not None else q,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        H, Lq, Lk, n_m, sm_scale * _LOG2E,
        HEAD_DIM=D, BLOCK_D=BLOCK_D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        HAS_LIMIT=limit is not None, IEEE=q.dtype == torch.float32,
        num_warps=4 if BLOCK_M * BLOCK_N >= 64 * 32 else 2,
    )
    return out


def block_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scales: Sequence[int],
                           sm_scale: float | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Full-sequence mode. q, k, v: (B, H, L, D), any strides, L == sum(scales). Query i (scale a)
    attends to key j (scale b) iff b <= a. Returns (B, H, L, D) in q's dtype (written into `out` if
    given). fp32 uses IEEE dots (no TF32); fp16/bf16 accumulate in fp32."""
    _check_qkv(q, k, v, "")
    if k.shape != q.shape:
        raise ValueError(f"q {tuple(q.shape)} and k/v {tuple(k.shape)} must have the same shape")
    sc = _check_scales(scales, q.shape[2])
    limit = scale_limits(sc, q.device)
    return _launch(q, k, v, out, limit, q.shape[2], _sm_scale(sm_scale, q.shape[3]))


def cached_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_len: int,
                     sm_scale: float | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Cached mode: q (B, H, Lq, D) attends, with no mask, to the first kv_len positions of the
    preallocated caches (B, H, Lmax, D); positions >= kv_len are never read. Returns (B, H, Lq, D)."""
    _check_qkv(q, k_cache, v_cache, "_cache")
    kv_len = int(kv_len)
    if not 1 <= kv_len <= k_cache.shape[2]:
        raise ValueError(f"kv_len = {kv_len} out of range 1..{k_cache.shape[2]} (cache length)")
    return _launch(q, k_cache, v_cache, out, None, kv_len, _sm_scale(sm_scale, q.shape[3]))


# ------------------------------------------------------------------------------------ eager references
def block_causal_mask(scales: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (L, L) mask, True where query i may attend to key j: the model's own mask."""
    return model_mask(tuple(int(s) for s in scales)).to(device)


def block_causal_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                     scales: Sequence[int], sm_scale: float | None = None) -> torch.Tensor:
    """Eager twin of `block_causal_attention`: SDPA with the boolean block-causal mask."""
    _check_scales(scales, q.shape[2])
    mask = block_causal_mask(scales, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=_sm_scale(sm_scale, q.shape[3]))


def cached_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_len: int,
                               sm_scale: float | None = None) -> torch.Tensor:
    """Eager twin of `cached_attention`: SDPA (no mask) on the cache slice [:kv_len]."""
    return F.scaled_dot_product_attention(q, k_cache[:, :, :kv_len], v_cache[:, :, :kv_len],
                                          scale=_sm_scale(sm_scale, q.shape[3]))
