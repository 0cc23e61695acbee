"""Evaluation metrics of the TimeGAN / Diffusion-TS unconditional generation benchmark.

All functions take real and fake windows of shape (N, T, C) scaled to [0, 1] (see
``shared/PROTOCOL.md`` sections 2-3).  Lower is better for all four scores.
"""
from .context_fid import context_fid, frechet_distance
from .correlational import correlational_score
from .discriminative import discriminative_score
from .predictive import predictive_score
from .report import evaluate_arrays, summarize

__all__ = ["discriminative_score", "predictive_score", "context_fid", "correlational_score",
           "evaluate_arrays", "summarize", "frechet_distance"]
