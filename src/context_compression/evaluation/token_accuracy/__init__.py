"""Exact-token accuracy: the `evaluate` module (`token_accuracy.py`) and its implementation."""
