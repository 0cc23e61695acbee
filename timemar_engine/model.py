"""TimeMAR: the stage-1 VQ-VAE and the stage-2 scale GPT under one config."""
from __future__ import annotations

from torch import nn

from .config import ModelConfig
from .gpt import ScaleGPT
from .vqvae import DualPathVQVAE


class TimeMAR(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vqvae = DualPathVQVAE(cfg)
        self.gpt = ScaleGPT(cfg)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part, and the total."""
        v = self.vqvae
        parts = {
            "decomposition": [getattr(v, "decompose", None)],
            "coarse_encoder": [v.coarse_enc, getattr(v, "path_embed", None)],
            "fine_encoder": [getattr(v, "fine_enc", None)],  # absent without decomposition
            "fusion": [v.fuse],
            "quantizer": [v.quant],
            "decoder": [v.decoder],
            "transformer": [self.gpt],
        }
        counts = {}
        for name, mods in parts.items():
            mods = [m for m in mods if m is not None]
            counts[name] = sum(m.numel() if isinstance(m, nn.Parameter) else
                               sum(p.numel() for p in m.parameters()) for m in mods)
        counts["total"] = sum(p.numel() for p in self.parameters())
        assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
        return counts
