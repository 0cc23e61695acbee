"""int8 linear layers (CPU, the extension's quantize_rows / dequant_rows around torch._int_mm)
against float64 references, and the engine's int8 precision: choice, errors, tokens (its
distribution test is beside the fp32 one in tests/test_fast_sampling.py)."""
import pytest
import torch
from torch import nn

from conftest import tiny_config
from timemar_engine import backends, extension
from timemar_engine.engine import Engine
from timemar_engine.fast_sampling import FastSampler
from timemar_engine.int8_linear import Int8Scratch, Int8Weight, int8_linear, int8_linear_reference
from timemar_engine.model import TimeMAR

pytestmark = pytest.mark.skipif(extension.load() is None, reason="C++ extension unavailable: "
                                f"{extension.unavailable_reason()}")


def rows(gen, m, k, row_stride=None):
    """(m, k) float32 rows of mixed magnitudes, optionally a view with a wider row stride."""
    base = torch.randn(m, row_stride or k, generator=gen) * torch.rand(m, 1, generator=gen) * 5
    return base[:, :k]


@pytest.mark.parametrize("m,k", [(1, 5), (3, 13), (37, 96), (130, 257)])
@pytest.mark.parametrize("norm", [False, True])
def test_quantize_rows_against_float64(m, k, norm):
    gen = torch.Generator().manual_seed(m * k)
    x = rows(gen, m, k, row_stride=k + 3)
    x[-1] = 0  # an all-zero row: without the norm, scale 1 and codes 0
    w, b = torch.randn(k, generator=gen), torch.randn(k, generator=gen)
    q = torch.full((m, k), 99, dtype=torch.int8)  # poisoned: every element must be written
    s = torch.full((m,), float("nan"))
    extension.quantize_rows(x, w if norm else None, b if norm else None, 1e-5, q, s)
    y = x.double()
    if norm:
        y = nn.functional.layer_norm(y, (k,), w.double(), b.double(), 1e-5)
    amax = y.abs().amax(1)
    want_s = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    want_q = torch.round(y / want_s[:, None])
    torch.testing.assert_close(s.double(), want_s, rtol=2e-6, atol=0)
    assert (q.double() - want_q).abs().max() <= 1  # float32 vs float64 rounding at .5 ties
    assert (q.double() != want_q).float().mean() < 0.01
    assert q.abs().max() <= 127
    assert (q.abs().amax(1) == 127).sum() == (m if norm else m - 1)  # each row's max -> 127
    if not norm:
        assert (q[-1] == 0).all() and s[-1] == 1


@pytest.mark.parametrize("accumulate", [False, True])
def test_dequant_rows_against_float64(accumulate):
    gen = torch.Generator().manual_seed(7)
    m, n = 29, 70
    acc = torch.randint(-2 ** 20, 2 ** 20, (m, n), generator=gen, dtype=torch.int32)
    sx, sw = torch.rand(m, generator=gen) / 100, torch.rand(n, generator=gen) / 100
    bias = torch.randn(n, generator=gen)
    out = torch.randn(m, n, generator=gen)
    before = out.double().clone()
    extension.dequant_rows(acc, sx, sw, bias, out, accumulate)
    want = acc.double() * sx.double()[:, None] * sw.double() + bias.double()
    torch.testing.assert_close(out.double(), want + before if accumulate else want,
                               rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("m,k,n", [(1, 96, 288), (45, 256, 1024), (17, 384, 96)])
def test_int8_linear_against_its_reference_and_fp32(m, k, n):
    gen = torch.Generator().manual_seed(n)
    lin = nn.Linear(k, n)
    x = rows(gen, m, k)
    w8 = Int8Weight(lin)
    assert (w8.dequantized() - lin.weight).abs().max() <= w8.scale.max() / 2 + 1e-7
    out = torch.full((m, n), float("nan"))
    norm = (torch.randn(k, generator=gen), torch.randn(k, generator=gen), 1e-5)
    got = int8_linear(extension, x.contiguous(), w8, out, Int8Scratch(m, max(k, n), x.device),
                      norm=norm)
    want = int8_linear_reference(x, w8, norm)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # and close to the fp32 layer: the quantization error, ~1% of the range
        exact = lin(nn.functional.layer_norm(x, (k,), norm[0], norm[1], 1e-5)).double()
    assert (got.double() - exact).abs().max() < 0.03 * exact.abs().max()
    res = torch.randn(m, n, generator=gen)
    acc = int8_linear(extension, x.contiguous(), w8, res.clone(), Int8Scratch(m, max(k, n),
                                                                              x.device),
                      accumulate=True)
    torch.testing.assert_close(acc.double(), res.double() + int8_linear_reference(x, w8),
                               rtol=1e-4, atol=1e-4)


def test_int8_ops_reject_bad_input():
    x, q, s = torch.randn(4, 8), torch.empty(4, 8, dtype=torch.int8), torch.empty(4)
    with pytest.raises(RuntimeError, match="int8|Char"):
        extension.quantize_rows(x, None, None, 0.0, q.float(), s)
    with pytest.raises(RuntimeError, match="shape"):
        extension.quantize_rows(x, None, None, 0.0, q[:3], s)
    with pytest.raises(RuntimeError, match="both"):
        extension.quantize_rows(x, torch.ones(8), None, 0.0, q, s)
    with pytest.raises(RuntimeError, match="contiguous rows"):
        extension.quantize_rows(x.t(), None, None, 0.0, q.t(), s)
    acc = torch.zeros(4, 8, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="w_scale"):
        extension.dequant_rows(acc, s, torch.ones(7), torch.zeros(8), x, False)


def test_int8_ops_pass_torch_library_opcheck():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 16, generator=gen)
    torch.library.opcheck(extension.ops().quantize_rows.default,
                          (x, torch.randn(16), torch.randn(16), 1e-5,
                           torch.empty(6, 16, dtype=torch.int8), torch.empty(6)),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(extension.ops().dequant_rows.default,
                          (torch.randint(-99, 99, (6, 5), dtype=torch.int32), torch.rand(6),
                           torch.rand(5), torch.randn(5), torch.empty(6, 5), True),
                          test_utils=("test_schema", "test_faketensor"))


def test_precision_choice_and_errors(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(backends, "cpu_has_vnni", lambda: True)
    assert backends.resolve_precision("auto", cpu, 256) == "int8"
    assert backends.resolve_precision("auto", cpu, 96) == "fp32"
    monkeypatch.setattr(backends, "cpu_has_vnni", lambda: False)  # int8 GEMMs emulated: slow
    assert backends.resolve_precision("auto", cpu, 256) == "fp32"
    assert backends.resolve_precision("int8", cpu, 256) == "int8"  # still there when asked
    monkeypatch.setattr(backends, "cpu_has_vnni", lambda: True)
    assert backends.resolve_precision("int8", cpu, 32) == "int8"
    assert backends.resolve_precision("auto", torch.device("cuda"), 256) == "bf16"
    with pytest.raises(ValueError, match="auto, fp32, int8"):
        backends.resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="CPU only"):
        backends.resolve_precision("int8", torch.device("cuda"))
    with pytest.raises(ValueError, match="needs backend='engine'"):
        Engine.load(device="cpu", backend="eager", precision="int8")
    assert Engine.load(device="cpu", precision="int8").info()["precision"] == "int8"
    assert Engine.load(device="cpu").precision == "fp32"  # the default model is 96 wide
    monkeypatch.setattr(backends, "extension_ops", lambda device: None)
    assert backends.resolve_precision("auto", cpu, 256) == "fp32"
    with pytest.raises(ValueError, match="C\\+\\+ extension"):
        backends.resolve_precision("int8", cpu)


def test_int8_engine_follows_the_eager_logits_where_they_are_not_close():
    """Replaying the int8 engine's uniforms through eager fp32 teacher-forced logits gives its
    tokens except where the quantization moved a cdf boundary across the uniform."""
    from timemar_engine.fast_sampling import draw_from_logits

    torch.manual_seed(3)
    model = TimeMAR(tiny_config(codebook_size=48, n_layer=3, d_model=64)).eval()
    sampler, B = FastSampler(model, torch.device("cpu"), "int8"), 64
    x, idx = sampler.generate(B, torch.Generator().manual_seed(5), return_indices=True)
    u = torch.rand(B, model.cfg.n_tokens, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model.gpt(model.vqvae.quant.teacher_inputs(idx)).reshape(-1, 48)
        ref = model.vqvae.decode(model.vqvae.quant.decode_indices(idx)).clamp(-1, 1)
    agree = (draw_from_logits(logits, u.reshape(-1)) == torch.cat(idx, 1).reshape(-1))
    assert agree.float().mean() > 0.9
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=0)  # the decoder stays fp32
