"""Model configuration: one serialisable dataclass and the named presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


def default_scales(seq_len: int) -> tuple[int, ...]:
    """Token-map lengths s_1 < ... < s_K; the last one is the latent length T'."""
    if seq_len == 24:
        return (1, 2, 3, 4, 6, 8, 12)
    latent = seq_len // 4
    scales = [1]
    while scales[-1] < latent:
        nxt = max(scales[-1] + 1, round(scales[-1] * 1.5))
        scales.append(min(nxt, latent))
    return tuple(scales)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a TimeMAR model (both stages)."""

    seq_len: int = 24
    channels: int = 1
    scales: tuple[int, ...] = ()  # empty: default_scales(seq_len)
    # decomposition
    trend_kernels: tuple[int, ...] = (3, 5, 9)  # at T = 24; scaled with T
    coarse_factor: int = 4
    # VQ-VAE
    hidden: int = 64
    enc_blocks: int = 2
    code_dim: int = 32
    codebook_size: int = 512
    phi_convs: int = 4
    phi_alpha: float = 0.5
    cosine_codes: bool = False
    attn_heads: int = 4
    # losses
    beta: float = 0.25
    w_components: float = 0.5
    w_fft: float = 0.1
    # transformer
    d_model: int = 256
    n_layer: int = 6
    n_head: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.scales = tuple(int(s) for s in (self.scales or default_scales(self.seq_len)))
        self.trend_kernels = tuple(int(k) for k in self.trend_kernels)
        self.validate()

    @property
    def latent_len(self) -> int:
        return self.scales[-1]

    @property
    def n_tokens(self) -> int:
        return sum(self.scales)

    @property
    def n_downsample(self) -> int:
        """Number of stride-2 stages taking T to T'."""
        return (self.seq_len // self.latent_len).bit_length() - 1

    def validate(self) -> None:
        if self.seq_len < 4:
            raise ValueError(f"seq_len must be >= 4, got {self.seq_len}")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        s = self.scales
        if any(b <= a for a, b in zip(s, s[1:])) or s[0] < 1:
            raise ValueError(f"scales must be strictly increasing positive lengths, got {s}")
        ratio = self.seq_len // s[-1]
        if self.seq_len % s[-1] or ratio & (ratio - 1):
            raise ValueError(
                f"seq_len {self.seq_len} must be the last scale {s[-1]} times a power of two")
        if self.d_model % self.n_head or self.hidden % self.attn_heads:
            raise ValueError("d_model must divide by n_head and hidden by attn_heads")
        if not 1 <= self.coarse_factor <= self.seq_len:
            raise ValueError(f"coarse_factor must be in [1, seq_len], got {self.coarse_factor}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


PRESETS: dict[str, dict] = {
    "xs": dict(hidden=32, enc_blocks=1, code_dim=16, codebook_size=256, d_model=96, n_layer=3,
               n_head=4, attn_heads=2),
    "s": dict(hidden=64, enc_blocks=2, code_dim=32, codebook_size=512, d_model=256, n_layer=6,
              n_head=4, attn_heads=4),
    "l": dict(hidden=128, enc_blocks=3, code_dim=64, codebook_size=1024, d_model=448, n_layer=12,
              n_head=7, attn_heads=4),
}


def preset(name: str, seq_len: int, channels: int, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return ModelConfig.from_dict({"seq_len": seq_len, "channels": channels, **PRESETS[name],
                                  **overrides})


@dataclass
class TrainConfig:
    """Optimisation settings for both stages."""

    batch_size: int = 64
    stage1_steps: int = 3000
    stage2_steps: int = 3000
    lr1: float = 2e-3
    lr2: float = 5e-4
    weight_decay: float = 0.05
    warmup: int = 200
    grad_clip: float = 1.0
    seed: int = 0
    max_minutes: float | None = None
    dead_code_every: int = 100
    log_every: int = 50
