"""A tiny ICAE whose encoder visibly differs from its decoder (LoRA B randomised)."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from context_compression import ICAEForCausalLM


def build_icae(text_config, tokenizer, **config_kwargs):
    """An eval-mode ICAE over a random backbone, with non-zero LoRA so the adapter switch matters."""
    tokenizer = copy.deepcopy(tokenizer)
    kwargs = dict(num_memory_tokens=4, mean_compression_rate=2, lora_r=4, lora_dropout=0.0)
    kwargs.update(config_kwargs)
    model = ICAEForCausalLM.from_base_model(AutoModelForCausalLM.from_config(text_config), tokenizer=tokenizer, **kwargs)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return model.eval(), tokenizer


@pytest.fixture
def make_icae(tiny_tokenizer):
    """`make_icae(text_config, **config_kwargs) -> (model, tokenizer)`."""
    return lambda text_config, **kwargs: build_icae(text_config, tiny_tokenizer, **kwargs)


@pytest.fixture
def icae(make_icae, tiny_llama_config):
    return make_icae(tiny_llama_config)


@pytest.fixture
def contexts(tiny_tokenizer):
    """Three contexts of 1, 2 and 3 segments (capacity 8 tokens), as token-id lists."""
    torch.manual_seed(1)
    return [torch.randint(10, 500, (n,)).tolist() for n in (5, 13, 21)]
