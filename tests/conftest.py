"""Shared fixtures: a local tokenizer and tiny backbone configs, so no test downloads anything."""

import copy
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config  # noqa: E402

from transformers import AutoModelForCausalLM  # noqa: E402

from context_compression import ICAEForCausalLM  # noqa: E402
from context_compression.data import build_tokenizer, generate_corpus  # noqa: E402

TINY_BACKBONE = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,  # Qwen3 defaults to 128 regardless of hidden_size; spelled out for every backbone.
    intermediate_size=37,
    max_position_embeddings=512,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Byte-level BPE (512 entries) trained on 200 synthetic documents; `<s>` is prepended.

    Shared by the whole session: do not add tokens to it, use `copy.deepcopy(tiny_tokenizer)` instead.
    """
    return build_tokenizer(generate_corpus(200), vocab_size=512)


def _tiny_config(config_class, tokenizer, **kwargs):
    return config_class(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **TINY_BACKBONE,
        **kwargs,
    )


@pytest.fixture
def tiny_llama_config(tiny_tokenizer):
    return _tiny_config(LlamaConfig, tiny_tokenizer)


@pytest.fixture
def tiny_mistral_config(tiny_tokenizer):
    # No sliding window, as in Mistral-7B v0.2 (the ICAE v2 base).
    return _tiny_config(MistralConfig, tiny_tokenizer, sliding_window=None)


@pytest.fixture
def tiny_qwen2_config(tiny_tokenizer):
    return _tiny_config(Qwen2Config, tiny_tokenizer)


@pytest.fixture
def tiny_qwen3_config(tiny_tokenizer):
    return _tiny_config(Qwen3Config, tiny_tokenizer)


def build_icae(text_config, tokenizer, **config_kwargs):
    """An eval-mode ICAE over a random backbone (4 slots per 8 tokens), with non-zero LoRA B so the encoder
    (LoRA on) visibly differs from the decoder (LoRA off). Returns `(model, its own copy of the tokenizer)`."""
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
