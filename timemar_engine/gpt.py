"""Stage 2: a GPT over the K token maps with a block-causal mask and a KV cache for sampling."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


def scale_ids(scales: tuple[int, ...]) -> torch.Tensor:
    """The scale index of each of the L flat token positions."""
    return torch.cat([torch.full((s,), k) for k, s in enumerate(scales)])


def block_causal_mask(scales: tuple[int, ...]) -> torch.Tensor:
    """(L, L) bool: query i may attend to key j iff scale(j) <= scale(i)."""
    ids = scale_ids(scales)
    return ids[None, :] <= ids[:, None]


class KVCache:
    """Preallocated keys and values [B, H, L, Dh], written at each scale's offset."""

    def __init__(self, batch: int, heads: int, length: int, head_dim: int, device, dtype):
        self.k = torch.zeros(batch, heads, length, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.d_model // cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.cache is not None:  # every cached key belongs to a scale <= this one: no mask
            k, v = self.cache.update(start, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d),
                                 nn.Dropout(cfg.dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask, start)
        return x + self.mlp(self.ln2(x))


class ScaleGPT(nn.Module):
    """Predicts the tokens of scale k from the accumulated reconstruction of scales < k (at a
    causal scale, token by token, also from the earlier tokens' codes); with one map (multiscale
    false), token t from the codes of tokens < t (`cfg.blocks`: the tokens of each step)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, L = cfg.d_model, cfg.n_tokens
        self.offsets = [0]
        for s in cfg.blocks:
            self.offsets.append(self.offsets[-1] + s)
        self.start_token = nn.Parameter(torch.randn(1, cfg.blocks[0], d) * 0.02)
        # with causal scales each input also carries the previous token's code (gpt_inputs)
        self.word_embed = nn.Linear(cfg.code_dim * (2 if cfg.causal_scales else 1), d)
        self.pos_embed = nn.Parameter(torch.randn(1, L, d) * 0.02)
        self.lvl_embed = nn.Embedding(len(cfg.scales), d)
        nn.init.normal_(self.lvl_embed.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.codebook_size)
        self.register_buffer("mask", block_causal_mask(cfg.blocks), persistent=False)
        self.register_buffer("level", scale_ids(cfg.scales), persistent=False)

    def embed(self, inputs: torch.Tensor | None, start: int, end: int, batch: int) -> torch.Tensor:
        """Token embeddings of positions [start, end): the start token or projected inputs."""
        parts = []
        if start == 0:
            parts.append(self.start_token.expand(batch, -1, -1))
        if inputs is not None:
            parts.append(self.word_embed(inputs))
        x = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        return x + self.pos_embed[:, start:end] + self.lvl_embed(self.level[start:end])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(x)).float()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) from the inputs of steps 2.. (B, L - blocks[0], Cz)."""
        B = inputs.shape[0]
        x = self.embed(inputs, 0, self.cfg.n_tokens, B)
        for block in self.blocks:
            x = block(x, self.mask)
        return self.logits(x)

    def step(self, inputs: torch.Tensor | None, k: int, batch: int) -> torch.Tensor:
        """Cached forward of step k's tokens (inputs None for k = 0) -> logits (B, blocks[k], V)."""
        start, end = self.offsets[k], self.offsets[k + 1]
        x = self.embed(inputs, start, end, batch)
        for block in self.blocks:
            x = block(x, None, start)
        return self.logits(x)

    def setup_cache(self, batch: int | None) -> None:
        """Allocate a KV cache for `batch` rows, or drop it (None)."""
        p = self.pos_embed
        for block in self.blocks:
            a = block.attn
            a.cache = None if batch is None else KVCache(batch, a.n_head, self.cfg.n_tokens,
                                                         a.head_dim, p.device, p.dtype)
