"""Model configuration: one serialisable dataclass and the named presets."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

# inclusive lower and upper bounds of numeric fields (None: unbounded); dropout excludes 1
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "seq_len": (4, None), "channels": (1, None), "coarse_factor": (1, None), "hidden": (1, None),
    "enc_blocks": (1, None), "code_dim": (1, None), "codebook_size": (2, 32767),
    "phi_convs": (1, None), "phi_alpha": (0, 1), "attn_heads": (1, None), "beta": (0, None),
    "w_components": (0, None), "w_fft": (0, None), "d_model": (1, None), "n_layer": (1, None),
    "n_head": (1, None), "dropout": (0, 0.999), "causal_scales": (0, None),
    "batch_size": (1, None), "stage1_steps": (0, None), "stage2_steps": (0, None),
    "lr1": (1e-12, 10), "lr2": (1e-12, 10), "weight_decay": (0, None), "warmup": (0, None),
    "grad_clip": (1e-12, None), "max_minutes": (1e-6, None), "dead_code_every": (1, None),
    "log_every": (1, None),
}
# the allowed values of string fields
CHOICES: dict[str, tuple[str, ...]] = {"precision": ("auto", "fp32", "bf16")}


def _typed(name: str, value, kind: str):
    """value checked against a field's annotation ('int', 'float', 'bool', 'str',
    'tuple[int, ...]', 'float | None') and its BOUNDS or CHOICES; ints are accepted for floats.
    Raises ValueError."""
    if kind.endswith("| None"):
        return None if value is None else _typed(name, value, kind[:-len("| None")].strip())
    if kind == "str":
        if value not in CHOICES[name]:
            raise ValueError(f"{name} must be one of {', '.join(CHOICES[name])}, got {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if kind.startswith("tuple"):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list of integers, got {value!r}")
        return tuple(_typed(f"{name} entry", v, "int") for v in value)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int" and not (number and float(value).is_integer()):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if kind == "float" and not (number and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = int(value) if kind == "int" else float(value)
    lo, hi = BOUNDS.get(name, (None, None))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        where = (f">= {lo:g}" if hi is None else f"<= {hi:g}" if lo is None
                 else f"in [{lo:g}, {hi:g}]")
        raise ValueError(f"{name} must be {where}, got {value!r}")
    return value


def check_names(cls, d: dict, what: str) -> None:
    """Every key of d is a field of the dataclass cls."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} fields: {sorted(unknown)}")


def check_fields(obj) -> None:
    """Type- and range-check every field of a config dataclass in place."""
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, _typed(f.name, getattr(obj, f.name), str(f.type)))


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
    # the design's parts, switchable for ablations (both on in TimeMAR)
    decomposition: bool = True  # False: one encoder / decoder path on the window itself
    guidance: bool = True  # False: the fine decoder path without the coarse-seasonal prior
    # False: one token map of the latent length, predicted token by token (raster order)
    multiscale: bool = True
    # the finest causal_scales token maps are drawn token by token (each token from the coarser
    # maps and the earlier tokens of its own map) instead of all at once; 0: next-scale throughout
    causal_scales: int = 0
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
        check_fields(self)
        if not self.scales:
            latent = default_scales(self.seq_len)[-1]
            self.scales = default_scales(self.seq_len) if self.multiscale else (latent,)
        self.validate()

    @property
    def latent_len(self) -> int:
        return self.scales[-1]

    @property
    def n_tokens(self) -> int:
        return sum(self.scales)

    @property
    def blocks(self) -> tuple[int, ...]:
        """The tokens the transformer predicts together, step by step: the scales (the causal
        ones one token at a time), or one token at a time for a single map."""
        if not self.multiscale:
            return (1,) * self.latent_len
        whole = len(self.scales) - self.causal_scales
        return self.scales[:whole] + (1,) * sum(self.scales[whole:])

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
        if self.multiscale and len(s) < 2:
            raise ValueError(f"scales needs at least two token maps (the transformer predicts "
                             f"each scale from the coarser ones), got {list(s)} for seq_len "
                             f"{self.seq_len}; one map is multiscale=false")
        if not self.multiscale and len(s) != 1:
            raise ValueError(f"multiscale=false predicts one token map token by token: scales "
                             f"must have one entry (or be left empty), got {list(s)}")
        if self.causal_scales and not self.multiscale:
            raise ValueError("causal_scales applies to next-scale models; a one-map model "
                             "(multiscale=false) is drawn token by token already")
        if self.causal_scales > len(s) - 1:
            raise ValueError(f"causal_scales must be at most the number of scales less one "
                             f"({len(s) - 1}: the first map is drawn at once), got "
                             f"{self.causal_scales}")
        if any(b <= a for a, b in zip(s, s[1:])) or s[0] < 1:
            raise ValueError(f"scales must be strictly increasing positive lengths, got {list(s)}")
        if any(k < 1 for k in self.trend_kernels) or not self.trend_kernels:
            raise ValueError(f"trend_kernels must be positive sizes, got {list(self.trend_kernels)}")
        ratio = self.seq_len // s[-1]
        if self.seq_len % s[-1] or ratio & (ratio - 1):
            raise ValueError(
                f"seq_len {self.seq_len} must be the last scale {s[-1]} times a power of two")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})")
        if self.hidden % self.attn_heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of attn_heads "
                             f"({self.attn_heads})")
        if self.guidance and not self.decomposition:
            raise ValueError("guidance (the fine path attending to the decoded coarse seasonal "
                             "part) needs decomposition; set guidance=false with "
                             "decomposition=false")
        if not 1 <= self.coarse_factor <= self.seq_len:
            raise ValueError(f"coarse_factor must be in [1, seq_len], got {self.coarse_factor}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        check_names(cls, d, "config")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


PRESETS: dict[str, dict] = {
    "xs": dict(hidden=32, enc_blocks=1, code_dim=16, codebook_size=256, d_model=96, n_layer=3,
               n_head=4, attn_heads=2),
    "s": dict(hidden=64, enc_blocks=2, code_dim=32, codebook_size=512, d_model=256, n_layer=6,
              n_head=4, attn_heads=4),
    "l": dict(hidden=128, enc_blocks=3, code_dim=64, codebook_size=1024, d_model=448, n_layer=12,
              n_head=7, attn_heads=4),
}


def preset(name: str, seq_len: int, channels: int, overrides: dict | None = None) -> ModelConfig:
    """A preset's config for windows of seq_len x channels, with model-field overrides. Every
    preset draws all token maps but the first token by token (causal_scales = K - 1, unless
    overridden): at the same training budget that helped or tied against drawing each map at once
    on all five benchmark datasets measured (bench/results/experiments_T24.md, 2026-12-08)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    fixed = {"seq_len": "the window length is set by seq_len (--seq-len)",
             "channels": "the channel count comes from the data"}
    overrides = overrides or {}
    for key in fixed.keys() & overrides.keys():
        raise ValueError(f"{key} cannot be overridden: {fixed[key]}")
    cfg = ModelConfig.from_dict({"seq_len": seq_len, "channels": channels, **PRESETS[name],
                                 **overrides})
    if "causal_scales" in overrides or not cfg.multiscale:
        return cfg
    return dataclasses.replace(cfg, causal_scales=len(cfg.scales) - 1)


DEFAULT_STEPS = 3000  # per stage, when neither a step count nor a time budget is given


@dataclass
class TrainConfig:
    """Optimisation settings for both stages."""

    batch_size: int = 64
    # steps per stage; None: as many as fit in the stage's share of max_minutes (DEFAULT_STEPS
    # when there is no budget either)
    stage1_steps: int | None = None
    stage2_steps: int | None = None
    lr1: float = 2e-3
    lr2: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 200
    grad_clip: float = 1.0
    seed: int = 0
    max_minutes: float | None = None
    dead_code_every: int = 100
    log_every: int = 50
    # stage 2's arithmetic: bf16 autocast (fp32 weights, optimizer and loss) or fp32; auto is
    # bf16 where the hardware runs it natively (`backends.resolve_train_precision`)
    precision: str = "auto"

    def __post_init__(self) -> None:
        check_fields(self)

    def steps(self, stage: int) -> int | None:
        """Stage 1's or 2's step count; None: until its share of max_minutes is spent."""
        given = self.stage1_steps if stage == 1 else self.stage2_steps
        return DEFAULT_STEPS if given is None and self.max_minutes is None else given

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        check_names(cls, d, "training")
        return cls(**d)
