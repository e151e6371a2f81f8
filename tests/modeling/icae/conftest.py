"""Contexts spanning one, two and three segments of the tiny ICAE (8 tokens per segment)."""

import pytest
import torch


@pytest.fixture
def contexts():
    """Three contexts of 1, 2 and 3 segments (capacity 8 tokens), as token-id lists."""
    torch.manual_seed(1)
    return [torch.randint(10, 500, (n,)).tolist() for n in (5, 13, 21)]
