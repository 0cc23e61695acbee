"""Fused nearest-codebook lookup (kernels/codebook.py): the Triton kernel (CUDA, or the interpreter on
CPU; conftest sets TRITON_INTERPRET=1 without a GPU) and the chunked CPU path, against an independent
float64 reference."""
import pytest
import torch

from timemar_engine import backends
from timemar_engine.kernels import codebook as cb
from timemar_engine.quantizer import nearest_code as quantizer_nearest_code

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (N, V, D): N never a multiple of BLOCK_N, V of BLOCK_V; few enough for the interpreter.
CASES = [(1, 1, 8), (2, 7, 16), (3, 259, 32), (5, 1024, 64), (13, 7, 8), (127, 259, 16),
         (127, 1024, 32), (1000, 259, 64), (1000, 7, 32), (1000, 1024, 32), (13, 259, 200), (127, 64, 128)]


@pytest.fixture
def triton_lookup():
    pytest.importorskip("triton")
    if DEVICE == "cpu" and not cb.triton_interpreted():
        pytest.skip("no GPU and TRITON_INTERPRET=1 was not set before the kernel module was imported")
    return cb.nearest_code_triton


def inputs(N, V, D, dtype=torch.float32, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    x, e = torch.randn(N, D, generator=g), torch.randn(V, D, generator=g)
    return x.to(device, dtype), e.to(device, dtype)


def sqdist64(x, e):
    """Float64 squared distances with explicit differences, in row chunks."""
    x, e = x.double().cpu(), e.double().cpu()
    return torch.cat([((xc[:, None, :] - e[None]) ** 2).sum(-1) for xc in x.split(64)])


def assert_nearest(idx, x, e, rtol=1e-5):
    """Exact equality with the float64 argmin, except near-ties (distances within rtol)."""
    assert idx.dtype == torch.int64 and idx.shape == (x.shape[0],)
    d = sqdist64(x, e)
    ref, got = d.argmin(1), idx.cpu()
    bad = (got != ref).nonzero().flatten()
    if len(bad):
        d_got, d_ref = d[bad, got[bad]], d[bad, ref[bad]]
        rel = (d_got - d_ref).abs() / d_ref.abs().clamp_min(1e-12)
        assert (rel < rtol).all(), f"rows {bad.tolist()[:8]}: rel gap {rel.max().item():.3g}"


def poisoned(N, D, idx_dtype=torch.int64, dtype=torch.float32, device=DEVICE):
    return (torch.full((N,), -1, dtype=idx_dtype, device=device),
            torch.full((N, D), float("nan"), dtype=dtype, device=device),
            torch.full((N, D), float("nan"), dtype=dtype, device=device))


def tied_inputs(V=259, device=DEVICE, dtype=torch.float32):
    """Duplicates of code 2 at 5, 130 (another tile/block) and V - 1 (the last); 200 duplicates 140."""
    x, e = inputs(16, V, 16, dtype=dtype, seed=3, device=device)
    for j in (5, 130, V - 1):
        e[j] = e[2]
    e[200] = e[140]
    x[0], x[7], x[9], x[15] = e[2], e[5], e[V - 1], e[200]
    return x, e


# ---------------------------------------------------------------- Triton kernel
@pytest.mark.parametrize("N,V,D", CASES)
def test_triton_matches_float64(triton_lookup, N, V, D):
    x, e = inputs(N, V, D, seed=N + V + D)
    idx, codes, res = triton_lookup(x, e, return_codes=True, residual=True)
    assert_nearest(idx, x, e)
    assert torch.equal(codes, e[idx]) and torch.equal(res, x - e[idx])


@pytest.mark.parametrize("V", [259, 1024])
def test_triton_ties_lowest_index(triton_lookup, V):
    x, e = tied_inputs(V)
    idx = triton_lookup(x, e).cpu()
    assert idx[[0, 7, 9]].tolist() == [2, 2, 2] and idx[15].item() == 140
    assert torch.equal(idx, torch.argmin(sqdist64(x, e), 1))


def test_triton_writes_every_output(triton_lookup):
    x, e = inputs(127, 259, 32, seed=1)
    out = poisoned(127, 32)
    got = triton_lookup(x, e, return_codes=True, residual=True, out=out)
    assert all(a is b for a, b in zip(got, out))
    assert (out[0] >= 0).all() and not out[1].isnan().any() and not out[2].isnan().any()
    assert torch.equal(out[0], triton_lookup(x, e))
    assert torch.equal(out[1], e[out[0]]) and torch.equal(out[2], x - e[out[0]])


def test_triton_strided_inputs(triton_lookup):
    x, e = inputs(130, 40, 32, seed=2)
    xs, es = x[::2, :16], e.T.contiguous().T[:, :16]  # row stride 64, codebook column-major
    idx, res = triton_lookup(xs, es, residual=True)
    assert_nearest(idx, xs, es)
    assert torch.equal(res, xs - es[idx])


def test_triton_fp16(triton_lookup):
    x, e = inputs(127, 259, 32, dtype=torch.float16, seed=4)
    idx, codes, res = triton_lookup(x, e, return_codes=True, residual=True)
    assert_nearest(idx, x, e)  # products of fp16 values are exact in fp32
    assert codes.dtype == torch.float16 and torch.equal(codes, e[idx])
    assert torch.equal(res, x - e[idx])


def test_triton_mixed_dtypes(triton_lookup):
    x, e = inputs(13, 259, 16, seed=5)
    x = x.half()
    idx, res = triton_lookup(x, e, residual=True)
    assert_nearest(idx, x, e)
    assert res.dtype == torch.float32 and torch.equal(res, x - e[idx])


@pytest.mark.skipif(DEVICE != "cuda", reason="bf16 tl.dot is wrong in the Triton interpreter; bf16 is "
                    "checked on CUDA only")
def test_triton_bf16_cuda(triton_lookup):
    x, e = inputs(1000, 1024, 32, dtype=torch.bfloat16, seed=6)
    idx, codes, res = triton_lookup(x, e, return_codes=True, residual=True)
    assert_nearest(idx, x, e)
    assert torch.equal(codes, e[idx]) and torch.equal(res, x - e[idx])


def test_dispatch(monkeypatch):
    """backends.nearest_code: Triton for CUDA tensors, the chunked path for CPU tensors."""
    calls = []
    for name in ("nearest_code_triton", "nearest_code_cpu"):
        fn = getattr(cb, name)
        monkeypatch.setattr(cb, name, lambda *a, _f=fn, _n=name, **k: calls.append(_n) or _f(*a, **k))
    x, e = inputs(5, 7, 8, device="cpu")
    backends.nearest_code(x, e)
    want = ["nearest_code_cpu"]
    if torch.cuda.is_available() and backends.triton_available():
        backends.nearest_code(x.cuda(), e.cuda())
        want.append("nearest_code_triton")
    assert calls == want


# ---------------------------------------------------------------- CPU path (no triton needed)
@pytest.mark.parametrize("N,V,D", CASES)
def test_cpu_matches_float64(N, V, D):
    x, e = inputs(N, V, D, seed=N + V + D, device="cpu")
    idx, codes, res = cb.nearest_code_cpu(x, e, return_codes=True, residual=True)
    assert_nearest(idx, x, e)
    assert torch.equal(codes, e[idx]) and torch.equal(res, x - e[idx])


def test_cpu_chunking_is_exact():
    x, e = inputs(1000, 259, 32, seed=7, device="cpu")
    whole = cb.nearest_code_cpu(x, e, chunk_rows=1000)
    for rows in (77, 1, 999, None):
        assert torch.equal(cb.nearest_code_cpu(x, e, chunk_rows=rows), whole)


@pytest.mark.parametrize("N,V,D", [(1000, 256, 32), (4097, 1024, 8), (300, 4096, 64)])
def test_cpu_equals_quantizer(N, V, D):
    x, e = inputs(N, V, D, seed=8, device="cpu")
    ours = cb.nearest_code_cpu(x, e)
    eager = ((e * e).sum(-1) - 2 * x @ e.T).argmin(-1)  # the quantizer's former eager form
    assert_nearest(ours, x, e)
    assert torch.equal(ours, eager)  # the same fp32 math (addmm vs sub of a matmul), same argmin
    assert torch.equal(quantizer_nearest_code(x, e, cosine=False), ours)  # the quantizer uses it


@pytest.mark.parametrize("V", [259, 1024])
def test_cpu_ties_lowest_index(V):
    x, e = tied_inputs(V, device="cpu")
    for rows in (None, 5):
        idx = cb.nearest_code_cpu(x, e, chunk_rows=rows)
        assert idx[[0, 7, 9]].tolist() == [2, 2, 2] and idx[15].item() == 140


@pytest.mark.parametrize("V", [96, 128, 259, 512, 1024, 4096])
def test_cpu_two_level_argmin_is_torch_argmin(V):
    """The blocked argmin of the CPU path returns torch.argmin's index, ties and NaN included."""
    d = torch.randn(50, V, generator=torch.Generator().manual_seed(V))
    d[1, 3] = d[1, V - 1] = d[1].min() - 1  # tie across blocks
    d[2, 0] = d[2, 1] = d[2].min() - 1  # tie inside a block
    d[3] = 0.0  # all tied
    d[4, V // 2] = d[4, V - 2] = float("nan")  # NaN wins, first one
    out = torch.empty(50, dtype=torch.int64)
    cb._argmin_rows(d, out)
    assert torch.equal(out, d.argmin(1))


def test_cpu_writes_every_output():
    x, e = inputs(127, 259, 32, seed=9, device="cpu")
    out = poisoned(127, 32, device="cpu")
    got = cb.nearest_code_cpu(x, e, return_codes=True, residual=True, out=out, chunk_rows=50)
    assert all(a is b for a, b in zip(got, out))
    assert (out[0] >= 0).all() and not out[1].isnan().any() and not out[2].isnan().any()
    assert torch.equal(out[1], e[out[0]]) and torch.equal(out[2], x - e[out[0]])


def test_cpu_fp16_and_reference():
    x, e = inputs(127, 259, 32, dtype=torch.float16, seed=10, device="cpu")
    idx, res = cb.nearest_code_cpu(x, e, residual=True)
    assert_nearest(idx, x, e)
    assert res.dtype == torch.float16 and torch.equal(res, x - e[idx])
    assert_nearest(cb.nearest_code_reference(x, e), x, e)


def test_cpu_return_structure():
    x, e = inputs(3, 7, 8, device="cpu")
    assert isinstance(cb.nearest_code_cpu(x, e), torch.Tensor)
    assert len(cb.nearest_code_cpu(x, e, return_codes=True)) == 2
    assert len(cb.nearest_code_cpu(x, e, residual=True)) == 2
    assert cb.nearest_code_cpu(x[:0], e).shape == (0,)


# ---------------------------------------------------------------- errors
def _error_cases():
    x, e = torch.randn(4, 8), torch.randn(7, 8)
    return {
        "x 1-D": (x[0], e), "codebook 3-D": (x, e[None]), "D mismatch": (x, e[:, :4]),
        "V == 0": (x, e[:0]), "device mismatch": (x, e.to("meta")),
        "float64": (x.double(), e.double()), "int": (x.long(), e), "not a tensor": (x.tolist(), e),
    }


@pytest.mark.parametrize("case", list(_error_cases()))
def test_errors(case):
    x, e = _error_cases()[case]
    for fn in (backends.nearest_code, cb.nearest_code_cpu, cb.nearest_code_reference):
        with pytest.raises(ValueError):
            fn(x, e)


def test_bad_out_and_chunk():
    x, e = torch.randn(4, 8), torch.randn(7, 8)
    with pytest.raises(ValueError):
        cb.nearest_code_cpu(x, e, out=torch.empty(4, dtype=torch.int32))
    with pytest.raises(ValueError):
        cb.nearest_code_cpu(x, e, return_codes=True, out=torch.empty(4, dtype=torch.int64))
    with pytest.raises(ValueError):
        cb.nearest_code_cpu(x, e, chunk_rows=0)
