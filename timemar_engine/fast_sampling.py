"""The engine's sampling loop: next-scale sampling with preallocated buffers and static shapes
(the finest `causal_scales` maps token by token).

Same model and distribution as `sampling.generate`, computed differently:
- scale 1 is the start token alone, so its logits and keys/values are computed once for one row
  and broadcast to the batch;
- every transformer buffer (activations, KV cache) is allocated once per batch size and reused;
  residual adds and biases go through in-place `addmm_` / `add_` (no fresh pages per step);
- tokens are drawn by inverse CDF from one uniform per token (softmax -> cumsum -> searchsorted)
  instead of `multinomial`, which draws V random numbers per row; no host synchronisation;
- on CPU the decoder runs as channels-last Conv2d (`fast_decoder.py`) over cache-sized blocks;
- with the C++/CUDA extension (`extension.py`), each scale's codebook gather, up-interpolation,
  phi conv, f_hat accumulation and the next scale's area-down input are one op, and the decoder's
  component sum, clamp and scaling to the requested units another (the same numbers: the scaling
  bit for bit, the rest within float rounding);
- on CPU with the extension, the transformer's linear layers of wide models run in int8
  (`int8_linear.py`: per-row activations, per-channel weights, exact int32 products; logits fp32);
- on CUDA the transformer runs in bf16 (logits in fp32) with the Triton cached-attention kernel,
  and the whole batch (all scales and the decoder) is captured in one CUDA graph per batch size.
`precision` chooses (`backends.resolve_precision`): "auto" (bf16 on CUDA; int8 on CPU with the
extension for wide enough models), "fp32" everywhere, "int8".
"""
from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from . import backends
from .decompose import area_resize
from .fast_decoder import decode_sum
from .int8_linear import Int8Scratch, Int8Weight, int8_linear
from .model import TimeMAR
from .sampling import check_filters, filter_logits, is_integer


def draw_from_logits(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: for logits (N, V) fp32 and uniforms (N,) in [0, 1), the first index whose
    cumulative probability exceeds u. Zero-probability (-inf) entries are never chosen."""
    w = (logits - logits.amax(-1, keepdim=True)).exp_()
    cdf = w.cumsum_(-1)
    target = uniforms.unsqueeze(-1) * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).clamp_(max=logits.shape[-1] - 1).squeeze(-1)


_C = (2 / torch.pi) ** 0.5


def gelu_tanh_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """In-place tanh-GELU as x * sigmoid(2 c (x + 0.044715 x^3)) (the same function; the CPU's
    sigmoid is ~4x cheaper than its tanh, measured); tmp is scratch of x's shape."""
    torch.mul(x, x, out=tmp)
    tmp.mul_(2 * _C * 0.044715).add_(2 * _C).mul_(x).sigmoid_()
    return x.mul_(tmp)


def _gelu_tanh_aten(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_(x, approximate="tanh")


class _Buffers:
    """Activations and the KV cache of one batch size, allocated once (row r * s + t holds
    position t of window r)."""

    def __init__(self, model: TimeMAR, batch: int, dtype: torch.dtype, device: torch.device,
                 int8: bool = False):
        cfg = model.cfg
        d, L, s_max = cfg.d_model, cfg.n_tokens, max(cfg.scales)
        kw = dict(device=device, dtype=dtype)
        self.batch = batch
        self.x = torch.empty(batch * s_max, d, **kw)
        self.qkv = torch.empty(batch * s_max, 3 * d, **kw)
        self.attn = torch.empty(batch * s_max, d, **kw)
        self.mlp = torch.empty(batch * s_max, 4 * d, **kw)
        self.k = torch.empty(cfg.n_layer, batch, cfg.n_head, L, d // cfg.n_head, **kw)
        self.v = torch.empty_like(self.k)
        self.tmp = torch.empty(batch * s_max, 4 * d, **kw)  # GELU scratch
        self.f_hat = torch.empty(batch, cfg.code_dim, cfg.scales[-1], device=device)
        # causal scales: the coarse part of a scale's inputs, projected once for all its tokens
        self.x_coarse = torch.empty(batch * s_max, d, **kw) if cfg.causal_scales else None
        self.int8 = Int8Scratch(batch * s_max, 4 * d, device) if int8 else None


class FastSampler:
    """Sample windows (B, T, C) in model scale [-1, 1]; buffers are kept per batch size."""

    def __init__(self, model: TimeMAR, device: torch.device, precision: str = "auto"):
        self.model, self.device = model, device
        self.cfg = cfg = model.cfg
        if not cfg.multiscale:
            raise ValueError(backends.engine_unavailable_reason(device, False))
        self.precision = backends.resolve_precision(precision, device, cfg.d_model)
        self.int8 = self.precision == "int8"
        self.gpt_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.ops = backends.extension_ops(device)  # None: the PyTorch path
        gpt = model.gpt
        self.w = [self._block_weights(b) for b in gpt.blocks]
        self.offsets = [0]  # first position of each scale
        for s in cfg.scales:
            self.offsets.append(self.offsets[-1] + s)
        self.n_head, self.head_dim = cfg.n_head, cfg.d_model // cfg.n_head
        self.attention = backends.cached_attention_for(device)
        self.gelu = gelu_tanh_ if device.type == "cpu" else _gelu_tanh_aten
        self.decode_fn = None  # an exported decoder (f_hat -> model-scale windows), or None
        self.decoder = backends.engine_decoder(model.vqvae.decoder, device)
        # per-position additive embedding (pos + level), in the transformer dtype
        self.pos = (gpt.pos_embed[0] + gpt.lvl_embed(gpt.level)).to(self.gpt_dtype).detach()
        # the input projection; with causal scales its second half takes the previous token's code
        word_w = gpt.word_embed.weight.detach().to(self.gpt_dtype)
        self.word_w = word_w[:, :cfg.code_dim].contiguous()
        self.prev_w = word_w[:, cfg.code_dim:].contiguous()
        self.codes = model.vqvae.quant.codebook.weight.detach().to(self.gpt_dtype)
        self.word_b = gpt.word_embed.bias.detach().to(self.gpt_dtype)
        self.start = gpt.start_token[0].detach().to(self.gpt_dtype)
        self.ln_f, self.head = gpt.ln_f, gpt.head  # logits in fp32
        self._buffers: dict[int, _Buffers] = {}
        self._row = self._new_buffers(1)  # scratch for the shared scale 1
        self._graphs: dict[tuple, tuple] = {}  # (batch, filters) -> (graph, uniforms, outputs)

    def _new_buffers(self, batch: int) -> _Buffers:
        return _Buffers(self.model, batch, self.gpt_dtype, self.device, self.int8)

    def _block_weights(self, blk) -> dict:
        a, m = blk.attn, blk.mlp
        t = lambda p: p.detach().to(self.gpt_dtype)  # noqa: E731
        norms = dict(ln1=(t(blk.ln1.weight), t(blk.ln1.bias), blk.ln1.eps),
                     ln2=(t(blk.ln2.weight), t(blk.ln2.bias), blk.ln2.eps))
        if self.int8:
            return dict(norms, qkv=Int8Weight(a.qkv), proj=Int8Weight(a.proj),
                        fc1=Int8Weight(m[0]), fc2=Int8Weight(m[2]))
        return dict(norms, qkv_wt=t(a.qkv.weight).t(), qkv_b=t(a.qkv.bias),
                    proj_wt=t(a.proj.weight).t(), proj_b=t(a.proj.bias), fc1_wt=t(m[0].weight).t(),
                    fc1_b=t(m[0].bias), fc2_wt=t(m[2].weight).t(), fc2_b=t(m[2].bias))

    def buffers(self, batch: int) -> _Buffers:
        buf = self._buffers.get(batch)
        if buf is None:
            buf = self._buffers[batch] = self._new_buffers(batch)
        return buf

    # --- transformer --------------------------------------------------------------------------
    def _layers(self, x: torch.Tensor, buf: _Buffers, start: int, end: int) -> torch.Tensor:
        """Run the blocks over x (b * s, d) of positions [start, end), caching keys and values."""
        if self.int8:
            return self._layers_int8(x, buf, start, end)
        b, d, H, Dh = buf.batch, self.cfg.d_model, self.n_head, self.head_dim
        s = end - start
        qkv, attn, mlp = buf.qkv[:b * s], buf.attn[:b * s], buf.mlp[:b * s]
        for i, w in enumerate(self.w):
            with backends.nvtx_range("layer"):
                torch.addmm(w["qkv_b"], F.layer_norm(x, (d,), *w["ln1"]), w["qkv_wt"], out=qkv)
                q, k, v = qkv.view(b, s, 3, H, Dh).transpose(1, 3).unbind(2)  # (b, H, s, Dh)
                buf.k[i, :, :, start:end] = k
                buf.v[i, :, :, start:end] = v
                with backends.nvtx_range("attention"):
                    self.attention(q, buf.k[i], buf.v[i], end,
                                   out=attn.view(b, s, H, Dh).transpose(1, 2))
                x.addmm_(attn, w["proj_wt"]).add_(w["proj_b"])
                torch.addmm(w["fc1_b"], F.layer_norm(x, (d,), *w["ln2"]), w["fc1_wt"], out=mlp)
                self.gelu(mlp, buf.tmp[:b * s])
                x.addmm_(mlp, w["fc2_wt"]).add_(w["fc2_b"])
        return x

    def _layers_int8(self, x: torch.Tensor, buf: _Buffers, start: int, end: int) -> torch.Tensor:
        """`_layers` with the four linear layers of each block in int8 (`int8_linear`)."""
        b, H, Dh, ops, sc = buf.batch, self.n_head, self.head_dim, self.ops, buf.int8
        s = end - start
        qkv, attn, mlp = buf.qkv[:b * s], buf.attn[:b * s], buf.mlp[:b * s]
        for i, w in enumerate(self.w):
            int8_linear(ops, x, w["qkv"], qkv, sc, norm=w["ln1"])
            q, k, v = qkv.view(b, s, 3, H, Dh).transpose(1, 3).unbind(2)  # (b, H, s, Dh)
            buf.k[i, :, :, start:end] = k
            buf.v[i, :, :, start:end] = v
            self.attention(q, buf.k[i], buf.v[i], end, out=attn.view(b, s, H, Dh).transpose(1, 2))
            int8_linear(ops, attn, w["proj"], x, sc, accumulate=True)
            int8_linear(ops, x, w["fc1"], mlp, sc, norm=w["ln2"])
            self.gelu(mlp, buf.tmp[:b * s])
            int8_linear(ops, mlp, w["fc2"], x, sc, accumulate=True)
        return x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(x.float()))

    # --- one batch -------------------------------------------------------------------------------
    def _run(self, buf: _Buffers, b: int, uniforms: torch.Tensor, filters: dict,
             affine: tuple | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """All scales and the decoder for b rows; uniforms (b, L) drive the token draws.
        Returns the windows and the K token maps; affine, with the extension: (span, lo) of
        `extension.decode_epilogue`, applied to the windows."""
        cfg, quant, d = self.cfg, self.model.vqvae.quant, self.cfg.d_model
        scales, off = cfg.scales, self.offsets
        # scale 1 (the start token alone): identical for every row, so computed for one row
        s0 = scales[0]
        one = self._row
        x0 = one.x[:s0]
        x0.copy_(self.start + self.pos[:s0])
        self._layers(x0, one, 0, s0)
        buf.k[:, :, :, :s0] = one.k[:, :, :, :s0]
        buf.v[:, :, :, :s0] = one.v[:, :, :, :s0]
        logits0 = filter_logits(self._logits(x0), **filters)
        f_hat, indices, ops, nxt = None, [], self.ops, None
        whole = len(scales) - cfg.causal_scales
        if ops is not None:
            f_hat = buf.f_hat[:b].zero_()
        for k, s in enumerate(scales):
            with backends.nvtx_range(f"scale {k}"):
                if k >= whole:  # token by token
                    idx = self._causal_scale(buf, b, k, nxt if ops else area_resize(f_hat, s),
                                             uniforms, filters)
                else:
                    if k == 0:
                        logits = logits0.expand(b, s, -1).reshape(b * s, -1)
                    else:
                        x = buf.x[:b * s]
                        inp = nxt if ops else area_resize(f_hat, s)
                        inp = inp.transpose(1, 2).reshape(b * s, -1).to(self.gpt_dtype)
                        torch.addmm(self.word_b, inp, self.word_w.t(), out=x)
                        x.view(b, s, d).add_(self.pos[off[k]:off[k + 1]])
                        self._layers(x, buf, off[k], off[k + 1])
                        logits = filter_logits(self._logits(x), **filters)
                    u = uniforms[:, off[k]:off[k + 1]].reshape(-1)
                    idx = draw_from_logits(logits, u).view(b, s)
                indices.append(idx)
                if ops is not None:
                    phi = quant.phis[quant.phi_of_scale[k]]
                    nxt = ops.interp_accumulate(f_hat, quant.codebook.weight, idx, phi.conv.weight,
                                                phi.conv.bias, phi.alpha,
                                                scales[k + 1] if k + 1 < len(scales) else 0)
                else:
                    h = quant.embed(idx, k)
                    f_hat = h if f_hat is None else f_hat.add_(h)
        with backends.nvtx_range("decode"):
            return self.decode(f_hat, affine), indices

    def _causal_scale(self, buf: _Buffers, b: int, k: int, coarse: torch.Tensor,
                      uniforms: torch.Tensor, filters: dict) -> torch.Tensor:
        """Scale k's tokens one by one: each input is the coarse maps' reconstruction at its
        position (coarse, b x Cz x s, projected once) plus the previous token's code."""
        s, d, p = coarse.shape[2], self.cfg.d_model, self.offsets[k]
        xc = buf.x_coarse[:b * s]
        inp = coarse.transpose(1, 2).reshape(b * s, -1).to(self.gpt_dtype)
        torch.addmm(self.word_b, inp, self.word_w.t(), out=xc)
        xc = xc.view(b, s, d).add_(self.pos[p:p + s])
        idx = torch.empty(b, s, dtype=torch.long, device=self.device)
        x = buf.x[:b]
        for t in range(s):
            x.copy_(xc[:, t])
            if t:
                x.addmm_(self.codes[idx[:, t - 1]], self.prev_w.t())
            self._layers(x, buf, p + t, p + t + 1)
            logits = filter_logits(self._logits(x), **filters)
            idx[:, t] = draw_from_logits(logits, uniforms[:, p + t])
        return idx

    def decode(self, f_hat: torch.Tensor, affine: tuple | None = None) -> torch.Tensor:
        """f_hat -> windows (B, T, C): the exported decoder when set, else the PyTorch decoder
        (`backends.engine_decoder`) over blocks of `backends.decode_rows` windows with the
        extension's epilogue (affine as in `run`) or the sum and clamp."""
        if self.decode_fn is not None:
            return self.decode_fn(f_hat)
        rows = backends.decode_rows(self.device) or f_hat.shape[0]
        blocks = [self._decode_block(f_hat[i:i + rows], affine)
                  for i in range(0, f_hat.shape[0], rows)]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks)

    def _decode_block(self, f_hat: torch.Tensor, affine: tuple | None) -> torch.Tensor:
        if self.ops is not None:
            return self.ops.decode_epilogue(*self.decoder(f_hat), *(affine or (None, None)))
        return decode_sum(self.decoder, f_hat)

    @torch.no_grad()
    def generate(self, batch: int, generator: torch.Generator | None = None, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, return_indices: bool = False):
        """Sample `batch` windows (B, T, C) in the model's [-1, 1] scale (and the token maps)."""
        if not is_integer(batch) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        filters = self.check_filters(temperature=temperature, top_k=top_k, top_p=top_p)
        x, indices = self.run(self.draw_uniforms(batch, generator), filters)
        return (x, indices) if return_indices else x

    @property
    def fuses_scaling(self) -> bool:
        """Whether `run(..., affine=)` applies the output scaling itself (the extension's decode
        epilogue); otherwise the windows come back in model scale."""
        return self.ops is not None and self.decode_fn is None

    def check_filters(self, **filters) -> dict:
        """Validate temperature / top_k / top_p once, before any work (`sampling.check_filters`:
        the same rules and numbers as the eager sampler)."""
        return check_filters(**filters)

    def draw_uniforms(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        """The (batch, L) uniforms that decide every token of a batch."""
        return torch.rand(batch, self.cfg.n_tokens, generator=generator, device=self.device)

    @torch.no_grad()
    def run(self, uniforms: torch.Tensor, filters: dict,
            affine: tuple | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Windows and token maps of one batch given its uniforms (deterministic). affine: the
        (span, lo) device tensors of the output scaling, used when `fuses_scaling`; they must
        stay alive and unchanged (CUDA graphs keep their addresses)."""
        batch = uniforms.shape[0]
        affine = affine if self.fuses_scaling else None
        if self.device.type == "cuda" and backends.cuda_graphs_enabled() and not self.decode_fn:
            return self._graph_run(batch, uniforms, filters, affine)
        return self._run(self.buffers(batch), batch, uniforms, filters, affine)

    def _graph_run(self, batch: int, uniforms: torch.Tensor, filters: dict,
                   affine: tuple | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Replay (capturing on first use) one CUDA graph of the whole batch for these settings."""
        key = (batch, tuple(sorted(filters.items(), key=lambda kv: kv[0])),
               None if affine is None else tuple(a.data_ptr() for a in affine))
        entry = self._graphs.get(key)
        if entry is None:
            buf, static_u = self.buffers(batch), uniforms.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up outside the graph (kernel compilation)
                for _ in range(2):
                    self._run(buf, batch, static_u, filters, affine)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._run(buf, batch, static_u, filters, affine)
            entry = self._graphs[key] = (graph, static_u, out)
        graph, static_u, out = entry
        static_u.copy_(uniforms)
        graph.replay()
        x, indices = out
        return x.clone(), [i.clone() for i in indices]


class StreamSampler:
    """Consecutive batches on `streams` FastSamplers at once, each on one intra-op thread.

    On a small CPU, one thread per independent batch beats two OpenMP threads per op (measured in
    bench/test_bench_sampling.py: the ops are small, so fork/join and barriers cost more than they
    give). Every stream computes with one thread and uniforms are drawn in batch order on the
    calling thread, so the output is the same for any number of streams. The torch thread count
    is restored afterwards."""

    def __init__(self, model: TimeMAR, device: torch.device, streams: int,
                 precision: str = "auto"):
        self.streams = streams if device.type == "cpu" else 1
        self.samplers = [FastSampler(model, device, precision) for _ in range(self.streams)]
        self.precision = self.samplers[0].precision

    @property
    def fuses_scaling(self) -> bool:
        return self.samplers[0].fuses_scaling

    def set_decoder(self, decode_fn) -> None:
        """Decode through an exported decoder (`export.OrtDecoder` / `TrtDecoder`, model scale);
        CUDA graphs are then off (onnxruntime cannot be captured)."""
        for s in self.samplers:
            s.decode_fn = decode_fn

    @torch.no_grad()
    def iter_generate(self, sizes: Iterable[int],
                      generator: torch.Generator | Iterable[torch.Generator] | None,
                      affine: tuple | None = None, **filters) -> Iterator[torch.Tensor]:
        """Yield the windows of each batch size in `sizes`, in order. `generator` is one generator
        drawn in batch order, or an iterable of one generator per batch (chunked streams);
        affine as in `FastSampler.run`."""
        first = self.samplers[0]
        filters = first.check_filters(**filters)
        if generator is None or isinstance(generator, torch.Generator):
            generator = itertools.repeat(generator)
        pairs = zip(sizes, generator)
        if first.device.type != "cpu":
            for b, gen in pairs:
                yield first.run(first.draw_uniforms(b, gen), filters, affine)[0]
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(self.streams, initializer=torch.set_num_threads,
                                    initargs=(1,)) as pool:
                pending: deque = deque()
                for i, (b, gen) in enumerate(pairs):
                    sampler = self.samplers[i % self.streams]
                    pending.append(pool.submit(sampler.run, first.draw_uniforms(b, gen), filters,
                                               affine))
                    if len(pending) == self.streams:
                        yield pending.popleft().result()[0]
                while pending:
                    yield pending.popleft().result()[0]
        finally:
            torch.set_num_threads(threads)
