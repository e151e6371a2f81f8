"""Trainers for the compression methods: `Trainer` subclasses, their arguments and collators."""

from .collators import ICAEDataCollator
from .icae import ICAETrainer, ICAETrainingArguments


__all__ = ["ICAEDataCollator", "ICAETrainer", "ICAETrainingArguments"]
