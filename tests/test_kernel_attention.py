"""Triton block-causal / cached attention vs a float64 reference.

Without a GPU, tests/conftest.py sets TRITON_INTERPRET=1 and the kernel runs on CPU tensors in the
Triton interpreter (fp32 and fp16 only: the interpreter's bf16 tl.dot is wrong)."""
import itertools
import math

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need the `triton` package (pip install triton)")

from timemar_engine.kernels import attention as A  # noqa: E402

INTERP = A._INTERPRETED
if not INTERP and not torch.cuda.is_available():
    pytest.skip("compiled Triton kernels need a CUDA GPU (or TRITON_INTERPRET=1 set before import)",
                allow_module_level=True)
DEVICE = "cpu" if INTERP else "cuda"

S127 = (1, 2, 3, 5, 8, 13, 21, 32, 42)
SCHEDULES = [(1,), (1, 1), (1, 2), (1, 2, 2), (1, 2, 4, 6), (1, 2, 3, 4, 6, 8, 12), S127]
assert [sum(s) for s in SCHEDULES] == [1, 2, 3, 5, 13, 36, 127]
HEAD_DIMS = (16, 24, 32, 48, 64, 128)
if INTERP:  # one head dim per schedule (plus extra 127-token cases) keeps the interpreter quick
    CASES = list(zip(SCHEDULES, (16, 32, 64, 128, 24, 64, 48))) + [(S127, 16), (S127, 128)]
    DTYPES = [torch.float32, torch.float16,
              pytest.param(torch.bfloat16, marks=pytest.mark.skip(
                  reason="the Triton interpreter's bf16 tl.dot is wrong (multiplies raw bits)"))]
else:
    CASES = list(itertools.product(SCHEDULES, HEAD_DIMS))
    DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _randn(*shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype=dtype, device=DEVICE)


def _qkv_views(B, H, L, D, dtype, seed):
    """q, k, v as non-contiguous (B, H, L, D) views of a packed (B, L, 3, H, D) projection."""
    qkv = _randn(B, L, 3, H, D, seed=seed, dtype=dtype)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def _nan_out(B, H, L, D, dtype):
    """A NaN-poisoned, non-contiguous (B, H, L, D) output view of a (B, L, H, D) buffer."""
    return torch.full((B, L, H, D), float("nan"), dtype=dtype, device=DEVICE).transpose(1, 2)


def _ref64(q, k, v, mask=None, sm_scale=None):
    q, k, v = (t.detach().cpu().double() for t in (q, k, v))
    s = torch.einsum("bhid,bhjd->bhij", q, k) * (sm_scale or 1 / math.sqrt(q.shape[-1]))
    if mask is not None:
        s = s.masked_fill(~mask.cpu(), float("-inf"))
    return torch.einsum("bhij,bhjd->bhid", s.softmax(-1), v)


def _mask64(scales):
    sid = torch.repeat_interleave(torch.arange(len(scales)), torch.tensor(scales))
    return sid[None, :] <= sid[:, None]  # key scale <= query scale


def _check(out, ref, dtype):
    assert not torch.isnan(out).any(), "some output elements were never written"
    tol = TOL[dtype]
    torch.testing.assert_close(out.cpu().double(), ref, atol=tol, rtol=tol)


def test_scale_limits_and_mask():
    lim = A.scale_limits((1, 2, 3), torch.device("cpu"))
    assert lim.dtype == torch.int32 and lim.tolist() == [1, 3, 3, 6, 6, 6]
    for sc in SCHEDULES:
        assert torch.equal(A.block_causal_mask(sc), _mask64(sc))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scales,D", CASES, ids=lambda x: str(sum(x)) if isinstance(x, tuple) else f"d{x}")
def test_block_causal_matches_float64(scales, D, dtype):
    B, H, L = 2, 3, sum(scales)
    q, k, v = _qkv_views(B, H, L, D, dtype, seed=L * 1000 + D)
    assert not q.is_contiguous()
    sm_scale = 0.3 if D % 32 else None  # non-default scale on some cases
    out = _nan_out(B, H, L, D, dtype)
    res = A.block_causal_attention(q, k, v, scales, sm_scale=sm_scale, out=out)
    assert res.data_ptr() == out.data_ptr()
    _check(out, _ref64(q, k, v, _mask64(scales), sm_scale), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_block_causal_contiguous_and_reference(dtype):
    scales, D = (1, 2, 3, 4, 6, 8, 12), 32
    q, k, v = (_randn(3, 2, 36, D, seed=s, dtype=dtype) for s in (1, 2, 3))
    out = A.block_causal_attention(q, k, v, scales, sm_scale=2.0)  # sharp softmax
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    ref = _ref64(q, k, v, _mask64(scales), 2.0)
    _check(out, ref, dtype)
    eager = A.block_causal_attention_reference(q.double(), k.double(), v.double(), scales, 2.0)
    torch.testing.assert_close(eager.cpu(), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("scales,D", [((1, 2, 3, 4, 6, 8, 12), 64), (S127, 32)], ids=["L36", "L127"])
def test_cached_matches_float64_and_full_sequence(scales, D, dtype):
    B, H, L = 2, 2, sum(scales)
    Lmax = L + 9
    q, k, v = _qkv_views(B, H, L, D, dtype, seed=7 + D)
    full = A.block_causal_attention(q, k, v, scales)
    start = 0
    for s in scales:
        end = start + s
        # Preallocated caches, garbage beyond kv_len (NaN keys, huge values): must never be read.
        kc = torch.full((B, H, Lmax, D), float("nan"), dtype=dtype, device=DEVICE)
        vc = torch.full((B, H, Lmax, D), 1e4, dtype=dtype, device=DEVICE)
        kc[:, :, :end], vc[:, :, :end] = k[:, :, :end], v[:, :, :end]
        qs = q[:, :, start:end]
        out = _nan_out(B, H, s, D, dtype)
        A.cached_attention(qs, kc, vc, end, out=out)
        _check(out, _ref64(qs, k[:, :, :end], v[:, :, :end]), dtype)
        # Scale s's rows of the full block-causal output are exactly this cached attention.
        torch.testing.assert_close(out, full[:, :, start:end], atol=TOL[dtype], rtol=TOL[dtype])
        ref = A.cached_attention_reference(qs.double(), kc.double(), vc.double(), end)
        torch.testing.assert_close(ref.cpu(), _ref64(qs, k[:, :, :end], v[:, :, :end]))
        start = end


def test_cached_noncontiguous_cache_and_sm_scale():
    B, H, Lq, Lmax, D, kv_len = 3, 2, 20, 80, 16, 70
    cache = _randn(2, B, Lmax, H, D, seed=11)  # (B, Lmax, H, D) layout viewed as (B, H, Lmax, D)
    cache[:, :, kv_len:] = float("nan")
    kc, vc = (t.transpose(1, 2) for t in cache.unbind(0))
    q = _randn(B, H, Lq, D, seed=12)
    out = A.cached_attention(q, kc, vc, kv_len, sm_scale=0.05)
    _check(out, _ref64(q, kc[:, :, :kv_len], vc[:, :, :kv_len], sm_scale=0.05), torch.float32)


def test_errors():
    q = _randn(2, 2, 6, 16, seed=0)
    sc = (1, 2, 3)
    with pytest.raises(ValueError, match="sum"):
        A.block_causal_attention(q, q, q, (1, 2, 2))
    with pytest.raises(ValueError, match="positive"):
        A.block_causal_attention(q, q, q, (0, 6))
    with pytest.raises(ValueError, match="same shape"):
        A.block_causal_attention(q, q[:, :, :3], q[:, :, :3], sc)
    with pytest.raises(ValueError, match="shape"):
        A.block_causal_attention(q, q, q[:, :1], sc)
    with pytest.raises(ValueError, match="dtype"):
        A.block_causal_attention(q, q.half(), q.half(), sc)
    with pytest.raises(ValueError, match="dtype"):
        A.block_causal_attention(q.double(), q.double(), q.double(), sc)
    with pytest.raises(ValueError, match="4-D"):
        A.block_causal_attention(q[0], q[0], q[0], sc)
    with pytest.raises(ValueError, match="sm_scale"):
        A.block_causal_attention(q, q, q, sc, sm_scale=-1.0)
    with pytest.raises(ValueError, match="head dim"):
        big = _randn(1, 1, 6, 256, seed=0)
        A.block_causal_attention(big, big, big, sc)
    with pytest.raises(ValueError, match="out"):
        A.block_causal_attention(q, q, q, sc, out=torch.empty_like(q[:, :1]))
    cache = _randn(2, 2, 10, 16, seed=1)
    for bad in (0, 11, -1):
        with pytest.raises(ValueError, match="kv_len"):
            A.cached_attention(q, cache, cache, bad)
    with pytest.raises(ValueError, match="disagree"):
        A.cached_attention(q, cache[:, :1], cache[:, :1], 5)
    with pytest.raises(ValueError, match="shape"):
        A.cached_attention(q, cache, cache[:, :, :5], 5)
    other = "cuda" if INTERP else "cpu"
    if other == "cpu" or torch.cuda.is_available():
        with pytest.raises(ValueError, match="CPU|CUDA"):
            x = q.to(other)
            A.block_causal_attention(x, x, x, sc)
