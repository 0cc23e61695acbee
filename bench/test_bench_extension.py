"""The C++/CUDA extension and the decoder export against eager, for the packaged default (`xs`,
C = 28) and the `s` preset (C = 6), T = 24, batch 2048:

- interpolate-accumulate: all K scales of one batch (codebook gather, linear up, phi, f_hat +=,
  area down) as the eager ops do them vs the extension's fused op;
- decode: f_hat -> windows in data units as numpy, eager (`vqvae.decode`, clamp, numpy scaling)
  vs the decoder + the extension's epilogue vs the engine's decode stage (the same over blocks of
  `backends.decode_rows` windows) vs onnxruntime (CPU) vs TensorRT (when installed);
- end to end: the engine's sampling loop with the extension's ops and without them.

Speed-ups are same-run median ratios. Run: pytest bench/ --benchmark-only
(TIMEMAR_BENCH_QUICK=1: small batches, for CI)."""
import importlib.util
import os

import numpy as np
import pytest
import torch

from timemar_engine import extension
from timemar_engine.backends import cpu_streams
from timemar_engine.config import preset
from timemar_engine.data import MinMaxScaler
from timemar_engine.engine import Engine
from timemar_engine.fast_sampling import FastSampler, StreamSampler
from timemar_engine.model import TimeMAR

QUICK = os.environ.get("TIMEMAR_BENCH_QUICK") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DEVICE_NAME = torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu"
BATCH = 16 if QUICK else 2048
MEDIANS: dict[tuple, float] = {}
NO_EXT = pytest.mark.skipif(not extension.available(DEVICE),
                            reason=f"extension ops unavailable on {DEVICE}: "
                                   f"{extension.unavailable_reason() or 'built without CUDA'}")


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(scope="module", params=["xs", "s"])
def case(request):
    """(model, scaler, name): the packaged default model, or random `s` weights."""
    if request.param == "xs":
        e = Engine.load(device=DEVICE, backend="eager")
        return e.model, e.scaler, "xs"
    torch.manual_seed(0)
    lo = np.random.default_rng(0).normal(size=6) * 100
    return TimeMAR(preset("s", 24, 6)).to(DEVICE).eval(), MinMaxScaler(lo, lo + 500), "s"


def record(benchmark, name: str, variant: str, windows: int, baseline: str) -> None:
    if benchmark.disabled:
        return
    rate = windows / benchmark.stats.stats.median
    MEDIANS[(benchmark.group, name, variant)] = rate
    info = benchmark.extra_info
    info.update(device=DEVICE_NAME, preset=name, batch=BATCH, windows_per_s=rate)
    base = MEDIANS.get((benchmark.group, name, baseline))
    if variant != baseline and base:
        info["speedup_vs_eager"] = rate / base


def latent(model, gen):
    q = model.vqvae.quant
    idx = [torch.randint(q.size, (BATCH, s), generator=gen).to(DEVICE) for s in q.scales]
    with torch.no_grad():
        return idx, q.decode_indices(idx)


@pytest.mark.parametrize("variant", ["eager", "extension"])
def test_interp_accumulate(benchmark, case, variant):
    model, _, name = case
    if variant == "extension" and not extension.available(DEVICE):
        pytest.skip(f"extension unavailable: {extension.unavailable_reason()}")
    benchmark.group = "interp_accumulate"
    q = model.vqvae.quant
    idx, _ = latent(model, torch.Generator().manual_seed(0))
    fn = (extension.interp_accumulate if variant == "extension"
          else extension.interp_accumulate_reference)
    f_hat = torch.empty(BATCH, q.dim, q.latent_len, device=DEVICE)
    scales = q.scales

    @torch.no_grad()
    def run():
        f_hat.zero_()
        for k, s in enumerate(scales):
            phi = q.phis[q.phi_of_scale[k]]
            fn(f_hat, q.codebook.weight, idx[k], phi.conv.weight, phi.conv.bias, phi.alpha,
               scales[k + 1] if k + 1 < len(scales) else 0)
        sync()

    benchmark.pedantic(run, rounds=3 if QUICK else 15, iterations=1, warmup_rounds=1)
    record(benchmark, name, variant, BATCH, "eager")


def decoders(model, scaler) -> dict:
    """f_hat -> numpy windows in data units, per variant (None: unavailable here, with why)."""
    span = torch.as_tensor(scaler.hi - scaler.lo, device=DEVICE)
    lo = torch.as_tensor(scaler.lo, device=DEVICE)

    def eager(f):
        x = model.vqvae.decode(f).clamp_(-1, 1).cpu().numpy()
        return scaler.from_unit((x + 1) / 2).astype(np.float32)

    def epilogue(f):
        return extension.decode_epilogue(*model.vqvae.decoder(f), span, lo).cpu().numpy()

    sampler = FastSampler(model, DEVICE)

    def engine(f):  # the engine's decode stage: decoder blocks of backends.decode_rows + epilogue
        return sampler.decode(f, (span, lo)).cpu().numpy()

    missing = f"extension unavailable: {extension.unavailable_reason()}"
    ok = extension.available(DEVICE)
    out = {"eager": eager, "extension_epilogue": epilogue if ok else missing,
           "engine": engine if ok else missing}
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):
        from timemar_engine.export import OrtDecoder
        ort = OrtDecoder.from_model(model, scaler, "data")
        out["onnxruntime"] = lambda f: ort(f).cpu().numpy()
    else:
        out["onnxruntime"] = "onnxruntime / onnxscript not installed"
    out["tensorrt"] = ("tensorrt is not installed" if importlib.util.find_spec("tensorrt") is None
                       else "TensorRT decode benchmark: run `timemar-engine export --format "
                            "tensorrt` first (not measured here)")
    return out


@pytest.fixture(scope="module")
def decode_variants(case):
    model, scaler, name = case
    with torch.no_grad():
        return decoders(model, scaler)


@pytest.mark.parametrize("variant", ["eager", "extension_epilogue", "engine", "onnxruntime",
                                     "tensorrt"])
def test_decode(benchmark, case, decode_variants, variant):
    model, _, name = case
    fn = decode_variants[variant]
    if isinstance(fn, str):
        pytest.skip(fn)
    benchmark.group = "decode"
    _, f_hat = latent(model, torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = decode_variants["eager"](f_hat), fn(f_hat)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4 * max(1, np.abs(want).max())

    @torch.no_grad()
    def run():
        fn(f_hat)

    benchmark.pedantic(run, rounds=3 if QUICK else 11, iterations=1, warmup_rounds=1)
    record(benchmark, name, variant, BATCH, "eager")


@pytest.mark.parametrize("variant", ["without_extension", "with_extension"])
def test_engine_sampling_extension(benchmark, case, variant):
    """The engine's loop as Engine runs it (one 256-window batch per stream on CPU), with the
    extension (precision auto: on CPU that includes the int8 linear layers for `s`) and without
    it (its ops off, fp32: what a build without the extension runs)."""
    model, _, name = case
    if variant == "with_extension" and not extension.available(DEVICE):
        pytest.skip(f"extension unavailable: {extension.unavailable_reason()}")
    benchmark.group = "engine_sampling"
    with_ext = variant == "with_extension"
    sampler = StreamSampler(model, DEVICE, cpu_streams(), "auto" if with_ext else "fp32")
    benchmark.extra_info["precision"] = sampler.precision
    if not with_ext:
        for s in sampler.samplers:
            s.ops = None
    batch = 16 if QUICK else (4096 if DEVICE.type == "cuda" else 256)
    sizes = [batch] * (2 if QUICK else max(2 * sampler.streams, 2048 // batch))
    gen = torch.Generator(DEVICE).manual_seed(0)

    def run():
        list(sampler.iter_generate(sizes, gen))
        sync()

    benchmark.pedantic(run, rounds=2 if QUICK else 5, iterations=1, warmup_rounds=1)
    record(benchmark, name, variant, sum(sizes), "without_extension")
