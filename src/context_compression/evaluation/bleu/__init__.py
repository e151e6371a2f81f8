"""Corpus BLEU: the `evaluate` module (`bleu.py`) and its implementation (`bleu_score.py`)."""
