"""Data for training and evaluating context compressors: dataset preparation (pretraining text, PwC
instructions, agent trajectories), a synthetic corpus, a local tokenizer, samples."""

from pathlib import Path

from .corpus import demo_splits, generate_corpus
from .instruction import prepare_instruction_dataset
from .pretrain import prepare_pretraining_dataset
from .tokenizer import build_tokenizer
from .trajectory import prepare_trajectory_dataset, trajectory_examples

PWC_DEV_PATH = Path(__file__).parent / "samples" / "pwc_dev_v2.jsonl"
"""Six PwC examples (`input`, `prompt`, `answer`) from getao/icae, CC0 1.0."""

__all__ = [
    "PWC_DEV_PATH",
    "build_tokenizer",
    "demo_splits",
    "generate_corpus",
    "prepare_instruction_dataset",
    "prepare_pretraining_dataset",
    "prepare_trajectory_dataset",
    "trajectory_examples",
]
