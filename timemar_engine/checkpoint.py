"""One-file checkpoints, loaded only with torch.load(weights_only=True)."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from .config import ModelConfig
from .data import MinMaxScaler
from .model import TimeMAR
from .safe_io import atomic_output

FORMAT_VERSION = 1
REQUIRED = ("format_version", "config", "vqvae", "gpt", "scaler_lo", "scaler_hi", "channels")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def atomic_save(obj, path: str | os.PathLike, overwrite: bool = True) -> None:
    """torch.save through `atomic_output`: durable, never partial; an existing path is replaced
    only with overwrite (else FileExistsError, checked at the rename)."""
    with atomic_output(path, overwrite=overwrite) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(path: str | os.PathLike, model: TimeMAR, scaler: MinMaxScaler,
                    channels: list[str], meta: dict, train_state: dict | None = None,
                    overwrite: bool = True) -> None:
    obj = {
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "vqvae": model.vqvae.state_dict(),
        "gpt": model.gpt.state_dict(),
        "scaler_lo": torch.as_tensor(scaler.lo, dtype=torch.float64),
        "scaler_hi": torch.as_tensor(scaler.hi, dtype=torch.float64),
        "channels": list(channels),
        "meta": meta,
    }
    if train_state is not None:
        obj["train_state"] = train_state
    atomic_save(obj, path, overwrite)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict, validated; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint (not a complete PyTorch "
                              f"zip archive)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((ln.strip() for ln in str(e).splitlines() if "global" in ln.lower()), "")
        raise CheckpointError(
            f"{path}: refused: the file contains pickled Python objects that are not plain "
            f"tensors or containers (it may run code when unpickled); nothing was executed. "
            f"{detail}".rstrip()) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({e})") from None
    if not isinstance(obj, dict) or "format_version" not in obj:
        raise CheckpointError(f"{path}: not a timemar-engine checkpoint (no format_version)")
    if obj["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {obj['format_version']!r} is not "
                              f"supported (this timemar-engine reads version {FORMAT_VERSION})")
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return obj


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[TimeMAR, MinMaxScaler, list[str], dict, dict]:
    """Model (eval mode, on device), scaler, channel names, meta and the raw dict."""
    obj = read_checkpoint(path)
    try:
        model = TimeMAR(ModelConfig.from_dict(obj["config"]))
        model.vqvae.load_state_dict(obj["vqvae"])
        model.gpt.load_state_dict(obj["gpt"])
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: config and weights do not fit together: {e}") from None
    scaler = MinMaxScaler(obj["scaler_lo"].numpy().astype(np.float64),
                          obj["scaler_hi"].numpy().astype(np.float64))
    return model.to(device).eval(), scaler, list(obj["channels"]), obj.get("meta", {}), obj
