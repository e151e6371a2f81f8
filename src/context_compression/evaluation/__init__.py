"""Evaluation: metrics as plain functions and as offline `evaluate` modules."""

from .metrics import LOCAL_METRICS, bleu, load_metric, token_accuracy

__all__ = ["LOCAL_METRICS", "bleu", "load_metric", "token_accuracy"]
