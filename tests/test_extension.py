"""The C++ extension's CPU ops against the eager ops they replace, the engine with and without it,
and the fallback when it is missing. CUDA versions: tests/test_cuda.py."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import tiny_config
from timemar_engine import Engine, extension
from timemar_engine.config import preset
from timemar_engine.fast_sampling import FastSampler
from timemar_engine.model import TimeMAR

SCHEDULES = {24: preset("xs", 24, 3).scales, 256: preset("xs", 256, 3).scales}
needs_ext = pytest.mark.skipif(extension.load() is None,
                               reason=f"C++ extension unavailable: {extension.unavailable_reason()}")


def test_the_readme_install_built_the_extension():
    """CI sets TIMEMAR_REQUIRE_EXTENSION=1: there, a build that silently fell back fails here."""
    if os.environ.get("TIMEMAR_REQUIRE_EXTENSION") != "1":
        pytest.skip("TIMEMAR_REQUIRE_EXTENSION is not set")
    assert extension.load() is not None, extension.unavailable_reason()
    assert extension.status()["cpu_ops"]


def random_case(gen, B, D, L, s, V, dtype):
    f = torch.randn(B, D, L, generator=gen, dtype=dtype)
    codebook = torch.randn(V, D, generator=gen, dtype=dtype)
    idx = torch.randint(V, (B, s), generator=gen)
    idx[0, 0], idx[-1, -1] = 0, V - 1  # both ends of the codebook
    weight = torch.randn(D, D, 3, generator=gen, dtype=dtype) / (3 * D) ** 0.5
    bias = torch.randn(D, generator=gen, dtype=dtype)
    return f, codebook, idx, weight, bias


@needs_ext
@pytest.mark.parametrize("T", [24, 256])
@pytest.mark.parametrize("B", [1, 37])
@pytest.mark.parametrize("D", [16, 32, 5])  # compiled-in code widths and the generic loop
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_interp_accumulate_matches_eager_on_every_scale(T, B, D, dtype, tol):
    gen = torch.Generator().manual_seed(T + B + D)
    scales = SCHEDULES[T]
    L, V = scales[-1], 97
    for k, s in enumerate(scales):
        nxt = scales[k + 1] if k + 1 < len(scales) else 0
        f, cb, idx, w, b = random_case(gen, B, D, L, s, V, dtype)
        alpha = float(torch.rand((), generator=gen))
        ours, ref = f.clone(), f.clone()
        down = extension.interp_accumulate(ours, cb, idx, w, b, alpha, nxt)
        want = extension.interp_accumulate_reference(ref, cb, idx, w, b, alpha, nxt)
        assert down.shape == (B, D, nxt) and down.dtype == dtype
        torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)
        torch.testing.assert_close(down, want, atol=tol, rtol=tol)


@needs_ext
def test_interp_accumulate_against_the_quantizer_in_float64():
    """The op reproduces MultiScaleQuantizer.embed + area_resize of a real model (float64)."""
    model = TimeMAR(tiny_config(code_dim=8)).double()
    q, scales = model.vqvae.quant, model.cfg.scales
    gen = torch.Generator().manual_seed(3)
    f_ref = torch.zeros(5, q.dim, q.latent_len, dtype=torch.float64)
    f_ext = f_ref.clone()
    for k, s in enumerate(scales):
        idx = torch.randint(q.size, (5, s), generator=gen)
        phi = q.phis[q.phi_of_scale[k]]
        nxt = scales[k + 1] if k + 1 < len(scales) else 0
        with torch.no_grad():
            down = extension.interp_accumulate(f_ext, q.codebook.weight, idx, phi.conv.weight,
                                               phi.conv.bias, phi.alpha, nxt)
            f_ref += q.embed(idx, k)
        torch.testing.assert_close(f_ext, f_ref, atol=1e-12, rtol=1e-12)
        if nxt:
            from timemar_engine.decompose import area_resize
            torch.testing.assert_close(down, area_resize(f_ref, nxt), atol=1e-12, rtol=1e-12)


@needs_ext
def test_interp_accumulate_rejects_bad_input():
    gen = torch.Generator().manual_seed(0)
    f, cb, idx, w, b = random_case(gen, 4, 8, 12, 3, 20, torch.float32)
    bad_idx = idx.clone()
    bad_idx[1, 2] = 20
    cases = [((f, cb, bad_idx, w, b, 0.5, 4), "outside"),
             ((f, cb, -idx - 1, w, b, 0.5, 4), "outside"),
             ((f, cb[:, :5], idx, w, b, 0.5, 4), "codebook"),
             ((f, cb, idx.int(), w, b, 0.5, 4), "int64"),
             ((f, cb, idx, w[:, :, :2], b, 0.5, 4), "weight"),
             ((f, cb, idx, w, b, 0.5, 13), "next_size"),
             ((f.transpose(1, 2).contiguous().transpose(1, 2), cb, idx, w, b, 0.5, 4), "contiguous"),
             ((f, cb.double(), idx, w, b, 0.5, 4), "dtype")]
    for args, msg in cases:
        before = args[0].clone()
        with pytest.raises(RuntimeError, match=msg):
            extension.interp_accumulate(*args)
        assert torch.equal(args[0], before)  # checks come before any write


@needs_ext
def test_ops_pass_torch_library_opcheck():
    """Schema, fake (meta) implementation and dispatch agree: what torch.compile relies on."""
    gen = torch.Generator().manual_seed(1)
    f, cb, idx, w, b = random_case(gen, 3, 8, 12, 4, 20, torch.float32)
    torch.library.opcheck(extension.ops().interp_accumulate.default, (f, cb, idx, w, b, 0.3, 6),
                          test_utils=("test_schema", "test_faketensor"))
    parts = [torch.randn(3, 4, 24, generator=gen) for _ in range(3)]
    torch.library.opcheck(extension.ops().decode_epilogue.default,
                          (*parts, torch.rand(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)),
                          test_utils=("test_schema", "test_faketensor"))


@needs_ext
def test_decode_epilogue_is_bit_identical_to_the_numpy_scaling():
    gen = torch.Generator().manual_seed(2)
    parts = [torch.randn(37, 5, 24, generator=gen) * 0.7 for _ in range(3)]
    lo = np.array([-3.0, 0.0, 1e6, 7.5, -1e-3])
    hi = np.array([4.0, 0.0, 3e7, 7.5, 2e-3])  # two constant channels
    x = (parts[0] + parts[1] + parts[2]).transpose(1, 2).clamp(-1, 1).numpy()
    want_data = np.where(hi - lo > 0, (x + 1) / 2 * (hi - lo) + lo, lo).astype(np.float32)
    span, low = torch.as_tensor(hi - lo), torch.as_tensor(lo)
    got = extension.decode_epilogue(*parts, span, low)
    assert got.dtype == torch.float32 and got.shape == (37, 24, 5)
    np.testing.assert_array_equal(got.numpy(), want_data)
    np.testing.assert_array_equal(extension.decode_epilogue(*parts).numpy(), x)
    np.testing.assert_array_equal(extension.decode_epilogue_reference(*parts, span, low).numpy(),
                                  want_data)
    with pytest.raises(RuntimeError, match="both span and lo"):
        extension.decode_epilogue(*parts, span, None)
    with pytest.raises(RuntimeError, match="same shape"):
        extension.decode_epilogue(parts[0], parts[1][:, :, :5], parts[2])
    with pytest.raises(RuntimeError, match="float32"):
        extension.decode_epilogue(parts[0].double(), parts[1], parts[2])


@needs_ext
def test_decode_epilogue_reads_time_major_and_strided_components():
    """The channels-last decoder hands over (B, C, T) views of (B, T, C) memory; any strides work
    and give the bytes of the contiguous inputs."""
    gen = torch.Generator().manual_seed(5)
    tm = [torch.randn(9, 24, 4, generator=gen).transpose(1, 2) for _ in range(2)]  # time-major
    odd = torch.randn(9, 4, 48, generator=gen)[:, :, ::2]  # stride 2 in time
    parts = [*tm, odd]
    span = torch.rand(4, generator=gen, dtype=torch.float64) * 9
    lo = torch.randn(4, generator=gen, dtype=torch.float64)
    want = extension.decode_epilogue(*[p.contiguous() for p in parts], span, lo)
    assert not any(p.is_contiguous() for p in parts)
    torch.testing.assert_close(extension.decode_epilogue(*parts, span, lo), want, atol=0, rtol=0)
    torch.testing.assert_close(extension.decode_epilogue_reference(*parts, span, lo), want,
                               atol=0, rtol=0)


@needs_ext
def test_engine_samples_decode_like_eager_given_the_same_tokens(rng):
    """Windows of the engine (extension ops) equal the eager decode of its own token maps."""
    model = TimeMAR(tiny_config()).eval()
    sampler = FastSampler(model, torch.device("cpu"))
    assert sampler.fuses_scaling
    gen = torch.Generator().manual_seed(4)
    x, indices = sampler.generate(300, generator=gen, return_indices=True)
    with torch.no_grad():
        ref = model.vqvae.decode(model.vqvae.quant.decode_indices(indices)).clamp(-1, 1)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=0)
    lo = rng.normal(size=3)
    span = np.array([2.0, 0.0, 5.0])
    affine = (torch.as_tensor(span), torch.as_tensor(lo))
    xd, idx_d = sampler.run(sampler.draw_uniforms(50, torch.Generator().manual_seed(5)),
                            sampler.check_filters(), affine)
    xm, idx_m = sampler.run(sampler.draw_uniforms(50, torch.Generator().manual_seed(5)),
                            sampler.check_filters())
    assert all(torch.equal(a, b) for a, b in zip(idx_d, idx_m))
    want = np.where(span > 0, (xm.numpy() + 1) / 2 * span + lo, lo).astype(np.float32)
    np.testing.assert_array_equal(xd.numpy(), want)


FALLBACK = """
import sys
sys.modules["timemar_engine._C"] = None  # as if pip had built the package without the extension
from timemar_engine import Engine, extension
e = Engine.load(device="cpu", backend="engine")
x = e.sample(20, seed=0)
print(extension.status()["loaded"], x.shape)
"""


@pytest.mark.parametrize("how", ["missing", "turned off"])
def test_without_the_extension_the_engine_runs_and_says_why_once(how):
    env = {**os.environ}
    if how == "missing":
        code = FALLBACK
    else:
        env["TIMEMAR_EXTENSION"] = "0"
        code = FALLBACK.replace('sys.modules["timemar_engine._C"] = None', "")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "(20,", "24,", "28)"]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("timemar-engine: the engine's interpolate"), lines
    assert ("not built" if how == "missing" else "TIMEMAR_EXTENSION=0") in lines[0]
    assert "Traceback" not in r.stderr


def test_info_reports_the_extension():
    r = subprocess.run([sys.executable, "-m", "timemar_engine", "info"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line = [x for x in r.stdout.splitlines() if x.startswith("extension")]
    want = "C++ ops loaded" if extension.load() is not None else "not available: "
    assert len(line) == 1 and want in line[0]


def test_same_seed_same_windows_with_the_extension(tmp_path):
    """The engine with the extension is deterministic: two runs, same bytes."""
    e = Engine.load(device="cpu")
    np.testing.assert_array_equal(e.sample(300, seed=9), e.sample(300, seed=9, batch_size=7))
