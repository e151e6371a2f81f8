"""A tiny trainable ICAE and pretraining data for trainer tests."""

import copy

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from context_compression import ICAEForCausalLM
from context_compression.data import generate_corpus
from context_compression.data.pretrain import prepare_pretraining_dataset
from context_compression.trainers import ICAETrainingArguments


def build_icae(text_config, tokenizer, seed=0, lora_b_std=0.0):
    """A fresh ICAE (same weights for the same seed) with its own copy of the tokenizer.

    `lora_b_std > 0` randomises LoRA B, so the encoder differs from the decoder and every LoRA weight has a gradient.
    """
    torch.manual_seed(seed)
    tokenizer = copy.deepcopy(tokenizer)
    model = ICAEForCausalLM.from_base_model(
        AutoModelForCausalLM.from_config(text_config),
        tokenizer=tokenizer,
        num_memory_tokens=4,
        mean_compression_rate=4,
        lora_r=4,
        lora_dropout=0.0,
    )
    if lora_b_std:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=lora_b_std)
    return model, tokenizer


def training_args(output_dir, **overrides):
    """Quiet CPU arguments for a few steps on 32-token windows, half of them LM continuation."""
    kwargs = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        save_strategy="no",
        per_device_train_batch_size=2,
        max_steps=4,
        learning_rate=1e-2,
        logging_steps=1,
        dataloader_num_workers=0,
        model_max_length=32,
        lm_ratio=0.5,
        min_tokens_for_lm=8,
        leave_tokens_for_lm=2,
        seed=0,
    )
    kwargs.update(overrides)
    return ICAETrainingArguments(**kwargs)


@pytest.fixture
def make_icae(tiny_tokenizer, tiny_llama_config):
    """`make_icae(seed=0, lora_b_std=0.0) -> (model, tokenizer)`."""
    return lambda **kwargs: build_icae(tiny_llama_config, tiny_tokenizer, **kwargs)


@pytest.fixture
def make_args(tmp_path):
    """`make_args(**overrides) -> ICAETrainingArguments` writing under the test's `tmp_path`."""
    return lambda **overrides: training_args(overrides.pop("output_dir", tmp_path / "out"), **overrides)


@pytest.fixture
def pretraining_data(make_icae, make_args):
    """Eight pretraining examples, built with the tokenizer of `make_icae()`."""
    model, tokenizer = make_icae()
    texts = Dataset.from_dict({"text": generate_corpus(8, seed=1)})
    return prepare_pretraining_dataset(texts, tokenizer, model, make_args())
