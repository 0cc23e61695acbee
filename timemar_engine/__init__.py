"""timemar-engine: TimeMAR multi-scale autoregressive time-series generation."""
from .config import ModelConfig, TrainConfig, preset
from .engine import Engine
from .train_api import train

__version__ = "0.1.0"
__all__ = ["Engine", "ModelConfig", "TrainConfig", "preset", "train", "__version__"]
