"""Fused nearest-codebook lookup: argmin_j |e_j|^2 - 2 x.e_j without the N x V matrix.

Three implementations side by side, all with torch.argmin's tie rule (lowest index wins):

- `nearest_code_triton`: a Triton kernel. A program holds BLOCK_N rows of x, loops over codebook
  tiles of BLOCK_V codes, and keeps a running (min, argmin) per row, like flash-attention's running
  max. The optional epilogue gathers the chosen codes and writes the residual x - code.
- `nearest_code_cpu`: the CPU production path. Rows go in chunks; each chunk does
  addmm(|e|^2, x_c, e.T, alpha=-2) into a reused ~4 MB buffer, then a two-level argmin.
- `nearest_code_reference`: eager cdist + argmin, the twin that benchmarks compare to.

Which one runs is decided in `timemar_engine.backends.nearest_code` (Triton on CUDA, the chunked
path elsewhere). The module imports without triton; then only the torch paths exist. NaN inputs: the torch paths follow torch.argmin, the
kernel's choice is unspecified.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU path needs no triton
    triton = tl = None

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_CHUNK_BYTES = 4 << 20  # fp32 distance block per chunk on CPU (measured: 4 MB is the sweet spot)

Result = Tensor | tuple[Tensor, ...]
Out = Tensor | tuple[Tensor, ...] | None


# ----------------------------------------------------------------------------- Triton kernel
if triton is not None:

    @triton.jit
    def _dot_acc(a, b, acc, DOT_F32: tl.constexpr, IEEE: tl.constexpr):
        """acc + a @ b.T with fp32 accumulation; fp32 operands use IEEE fp32 (no TF32)."""
        if DOT_F32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE:
            acc = tl.dot(a, tl.trans(b), acc, input_precision="ieee")
        else:  # fp16/bf16 operands: exact products, fp32 accumulation
            acc = tl.dot(a, tl.trans(b), acc)
        return acc

    @triton.jit
    def _nearest_code_kernel(
        x_ptr, e_ptr, e2_ptr, idx_ptr, codes_ptr, res_ptr,
        N, V, D,
        stride_xn, stride_xd, stride_en, stride_ed,
        stride_in, stride_cn, stride_cd, stride_rn, stride_rd,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
        DOT_F32: tl.constexpr, IEEE: tl.constexpr,
        WRITE_CODES: tl.constexpr, WRITE_RES: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xn  # int64: N * stride can exceed int32
        dims = tl.arange(0, BLOCK_D)
        dim_ok = dims < D
        x_mask = row_ok[:, None] & dim_ok[None, :]
        if BLOCK_K == BLOCK_D:  # small D: the x tile stays in registers for the whole loop
            x = tl.load(x_rows + dims[None, :] * stride_xd, mask=x_mask, other=0.0)

        best = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_N], tl.int32)
        for v0 in range(0, V, BLOCK_V):
            codes = v0 + tl.arange(0, BLOCK_V)
            code_ok = codes < V
            e_rows = e_ptr + codes.to(tl.int64)[:, None] * stride_en
            xe = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
            if BLOCK_K == BLOCK_D:
                e = tl.load(e_rows + dims[None, :] * stride_ed,
                            mask=code_ok[:, None] & dim_ok[None, :], other=0.0)
                xe = _dot_acc(x, e, xe, DOT_F32, IEEE)
            else:  # large D: K chunks keep the dot operands out of register spills
                for k0 in tl.static_range(0, BLOCK_D, BLOCK_K):
                    dk = k0 + tl.arange(0, BLOCK_K)
                    dk_ok = dk < D
                    xk = tl.load(x_rows + dk[None, :] * stride_xd,
                                 mask=row_ok[:, None] & dk_ok[None, :], other=0.0)
                    ek = tl.load(e_rows + dk[None, :] * stride_ed,
                                 mask=code_ok[:, None] & dk_ok[None, :], other=0.0)
                    xe = _dot_acc(xk, ek, xe, DOT_F32, IEEE)
            e2 = tl.load(e2_ptr + codes, mask=code_ok, other=0.0)
            dist = tl.where(code_ok[None, :], e2[None, :] - 2.0 * xe, float("inf"))
            tile_min, tile_arg = tl.min(dist, axis=1, return_indices=True)  # first minimal index
            better = tile_min < best  # strict: an earlier tile keeps ties
            best = tl.where(better, tile_min, best)
            best_idx = tl.where(better, tile_arg + v0, best_idx)

        tl.store(idx_ptr + rows.to(tl.int64) * stride_in, best_idx.to(tl.int64), mask=row_ok)
        if WRITE_CODES or WRITE_RES:  # fused epilogue: gather the chosen codes, x - code
            code = tl.load(e_ptr + best_idx.to(tl.int64)[:, None] * stride_en
                           + dims[None, :] * stride_ed, mask=x_mask, other=0.0)
            if WRITE_CODES:
                tl.store(codes_ptr + rows.to(tl.int64)[:, None] * stride_cn + dims[None, :] * stride_cd,
                         code.to(codes_ptr.dtype.element_ty), mask=x_mask)
            if WRITE_RES:
                if BLOCK_K != BLOCK_D:
                    x = tl.load(x_rows + dims[None, :] * stride_xd, mask=x_mask, other=0.0)
                res = x.to(tl.float32) - code.to(tl.float32)
                tl.store(res_ptr + rows.to(tl.int64)[:, None] * stride_rn + dims[None, :] * stride_rd,
                         res.to(res_ptr.dtype.element_ty), mask=x_mask)


def triton_interpreted() -> bool:
    """True when the kernel was decorated under TRITON_INTERPRET=1 (it then runs on CPU tensors)."""
    return triton is not None and type(_nearest_code_kernel).__name__ == "InterpretedFunction"


# ----------------------------------------------------------------------------- shared helpers
def _check(x: Tensor, codebook: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a 2-D tensor (N, D), got shape {tuple(getattr(x, 'shape', ()))}")
    if not isinstance(codebook, Tensor) or codebook.dim() != 2:
        raise ValueError(f"codebook must be a 2-D tensor (V, D), "
                         f"got shape {tuple(getattr(codebook, 'shape', ()))}")
    if x.shape[1] != codebook.shape[1]:
        raise ValueError(f"code dim mismatch: x has D={x.shape[1]}, codebook has D={codebook.shape[1]}")
    if codebook.shape[0] == 0:
        raise ValueError("codebook is empty (V == 0)")
    if x.device != codebook.device:
        raise ValueError(f"x is on {x.device} but codebook is on {codebook.device}")
    for name, t in (("x", x), ("codebook", codebook)):
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name} has unsupported dtype {t.dtype}; use float32, float16 or bfloat16")


def _outputs(x: Tensor, codebook: Tensor, return_codes: bool, residual: bool,
             out: Out) -> list[Tensor | None]:
    """[idx, codes or None, residual or None], taken from `out` (checked) or freshly allocated."""
    N, D = x.shape
    specs = [((N,), torch.int64, True), ((N, D), codebook.dtype, return_codes),
             ((N, D), torch.promote_types(x.dtype, codebook.dtype), residual)]
    if out is None:
        return [torch.empty(s, dtype=dt, device=x.device) if want else None for s, dt, want in specs]
    given = [out] if isinstance(out, Tensor) else list(out)
    wanted = [spec for spec in specs if spec[2]]
    if len(given) != len(wanted):
        raise ValueError(f"out must hold {len(wanted)} tensor(s) (idx[, codes][, residual]), got {len(given)}")
    it = iter(given)
    bufs = []
    for shape, dt, want in specs:
        if not want:
            bufs.append(None)
            continue
        t = next(it)
        if tuple(t.shape) != shape or t.dtype != dt or t.device != x.device:
            raise ValueError(f"out tensor must be {shape} {dt} on {x.device}, "
                             f"got {tuple(t.shape)} {t.dtype} on {t.device}")
        bufs.append(t)
    return bufs


def _pack(bufs: list[Tensor | None]) -> Result:
    kept = [b for b in bufs if b is not None]
    return kept[0] if len(kept) == 1 else tuple(kept)


# ----------------------------------------------------------------------------- launchers
def _blocks(D: int, fp32_dot: bool) -> tuple[int, int, int, int, int]:
    """(BLOCK_N, BLOCK_V, BLOCK_D, BLOCK_K, num_warps). D is padded to a power of two >= 16 for tl.dot;
    D > 64 runs in BLOCK_K chunks. Chosen from ptxas resource usage for sm_90 (no spills)."""
    block_d = max(16, triton.next_power_of_2(D))
    if fp32_dot:  # IEEE fp32 dot runs on FMA units and needs many registers
        if block_d <= 64:
            return 64, 128, block_d, block_d, 8
        return (32, 64, block_d, 32, 4) if block_d <= 128 else (32, 32, block_d, 32, 4)
    if block_d <= 32:
        return 128, 128, block_d, block_d, 8
    if block_d <= 64:
        return 64, 128, block_d, block_d, 8
    return (64, 64, block_d, 64, 4) if block_d <= 128 else (32, 32, block_d, 64, 4)


def nearest_code_triton(x: Tensor, codebook: Tensor, *, return_codes: bool = False,
                        residual: bool = False, out: Out = None) -> Result:
    """Triton kernel launcher (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)."""
    if triton is None:
        raise RuntimeError("nearest_code_triton needs the `triton` package")
    _check(x, codebook)
    if x.device.type == "cpu" and not triton_interpreted():
        raise ValueError("CPU tensors need TRITON_INTERPRET=1 set before timemar_engine.kernels.codebook "
                         "is imported; use nearest_code_cpu instead")
    bufs = _outputs(x, codebook, return_codes, residual, out)
    idx, codes, res = bufs
    N, D = x.shape
    V = codebook.shape[0]
    if N == 0:
        return _pack(bufs)
    e2 = codebook.float().pow(2).sum(-1).contiguous()  # |e|^2 once per call, fp32
    # fp32 operands use IEEE fp32 dot (no TF32). Mixed dtypes, and bf16 in the interpreter (whose
    # bf16 dot is wrong), are upcast to fp32 in registers.
    dot_f32 = x.dtype != codebook.dtype or (x.dtype == torch.bfloat16 and x.device.type == "cpu")
    ieee = dot_f32 or x.dtype == torch.float32
    block_n, block_v, block_d, block_k, warps = _blocks(D, ieee)
    dummy = idx  # placeholder pointer for outputs that are not written
    c, r = (codes if codes is not None else dummy), (res if res is not None else dummy)
    cs = codes.stride() if codes is not None else (0, 0)
    rs = res.stride() if res is not None else (0, 0)
    grid = (triton.cdiv(N, block_n),)
    with torch.cuda.device(x.device) if x.is_cuda else nullcontext():
        _nearest_code_kernel[grid](
            x, codebook, e2, idx, c, r, N, V, D,
            x.stride(0), x.stride(1), codebook.stride(0), codebook.stride(1),
            idx.stride(0), cs[0], cs[1], rs[0], rs[1],
            BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_D=block_d, BLOCK_K=block_k, DOT_F32=dot_f32, IEEE=ieee,
            WRITE_CODES=codes is not None, WRITE_RES=res is not None, num_warps=warps)
    return _pack(bufs)


def _argmin_rows(d: Tensor, out: Tensor) -> None:
    """out[i] = argmin(d[i]) with torch.argmin's result (first index on ties; NaN wins), two-level.
    torch's amin is vectorised (~8x faster than argmin on CPU), so take the block of B codes holding
    the first minimum, then argmin inside it: ~2x faster than argmin for V >= 512 (measured)."""
    n, V = d.shape
    B = 128 if V % 128 == 0 and V >= 512 else 32 if V % 32 == 0 and V >= 128 else 0
    if B == 0:
        torch.argmin(d, dim=1, out=out)
        return
    blocks = d.view(n, V // B, B)
    blk = blocks.amin(2).argmin(1)  # the first block whose min is the row min holds the first argmin
    inner = blocks[torch.arange(n, device=d.device), blk].argmin(1)
    torch.add(inner, blk, alpha=B, out=out)


def nearest_code_cpu(x: Tensor, codebook: Tensor, *, return_codes: bool = False,
                     residual: bool = False, chunk_rows: int | None = None,
                     out: Out = None) -> Result:
    """Chunked torch path (any device; the CPU production path). Memory: one chunk_rows x V fp32
    block (default ~4 MB), reused; distances are addmm(|e|^2, x_c, e.T, alpha=-2) in fp32."""
    _check(x, codebook)
    bufs = _outputs(x, codebook, return_codes, residual, out)
    idx, codes, res = bufs
    N, V = x.shape[0], codebook.shape[0]
    if chunk_rows is None:
        chunk_rows = max(1, _CHUNK_BYTES // (4 * V))
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    chunk_rows = min(chunk_rows, max(N, 1))
    e = codebook.float()
    e2, eT = e.pow(2).sum(-1), e.T
    dist = torch.empty(chunk_rows, V, dtype=torch.float32, device=x.device)
    for s in range(0, N, chunk_rows):
        n = min(chunk_rows, N - s)
        torch.addmm(e2, x[s:s + n].float(), eT, alpha=-2, out=dist[:n])
        _argmin_rows(dist[:n], idx[s:s + n])
    if codes is not None or res is not None:
        chosen = codebook[idx]
        if codes is not None:
            codes.copy_(chosen)
        if res is not None:
            torch.sub(x, chosen, out=res)
    return _pack(bufs)


def nearest_code_reference(x: Tensor, codebook: Tensor) -> Tensor:
    """Eager twin: cdist + argmin (materialises N x V)."""
    _check(x, codebook)
    return torch.cdist(x.float(), codebook.float()).argmin(-1)

