"""Data for training and evaluating context compressors: a synthetic corpus, a local tokenizer, samples."""

from pathlib import Path

from .corpus import demo_splits, generate_corpus
from .tokenizer import build_tokenizer

PWC_DEV_PATH = Path(__file__).parent / "samples" / "pwc_dev_v2.jsonl"
"""Six PwC examples (`input`, `prompt`, `answer`) from getao/icae, CC0 1.0."""

__all__ = ["PWC_DEV_PATH", "build_tokenizer", "demo_splits", "generate_corpus"]
