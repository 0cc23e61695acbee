import os

import torch

# Triton kernels run in the interpreter (CPU tensors) when there is no GPU; this must be set before
# any kernel module is imported, because @triton.jit picks the mode when it decorates.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import numpy as np
import pytest

from timemar_engine.config import ModelConfig

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    return Path(os.environ.get("TIMEMAR_DATA_DIR", REPO.parent / "shared" / "datasets"))


@pytest.fixture
def datasets_dir() -> Path:
    d = data_dir()
    if not (d / "stock_data.csv").exists():
        pytest.skip(f"benchmark data not found in {d} (set TIMEMAR_DATA_DIR to the datasets folder)")
    return d


def tiny_config(**kw) -> ModelConfig:
    base = dict(seq_len=24, channels=3, hidden=16, enc_blocks=1, code_dim=8, codebook_size=32,
                d_model=32, n_layer=2, n_head=2, attn_heads=2)
    return ModelConfig(**{**base, **kw})


def train_tiny(folder: Path, rng: np.random.Generator, **overrides) -> Path:
    """A tiny_config-sized model with model-field overrides, trained 10 + 10 steps on a
    3-channel series (two sines and a random walk): its checkpoint."""
    from timemar_engine.train_api import train

    t = np.arange(2000)
    series = np.stack([np.sin(t / 7), np.cos(t / 11), rng.normal(size=2000).cumsum() / 30], 1)
    np.save(folder / "series.npy", series)
    sizes = {k: v for k, v in tiny_config().to_dict().items()
             if k in ("hidden", "enc_blocks", "code_dim", "codebook_size", "d_model", "n_layer",
                      "n_head", "attn_heads")}
    ckpt = folder / "m.pt"
    train(str(folder / "series.npy"), out=ckpt, preset="xs", overrides={**sizes, **overrides},
          steps1=10, steps2=10, batch_size=16, device="cpu", progress=False)
    return ckpt


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
