"""Tiny ICAEs, training arguments and pretraining data for trainer tests."""

import pytest
import torch
from datasets import Dataset

from context_compression.data import generate_corpus
from context_compression.data.pretrain import prepare_pretraining_dataset
from context_compression.trainers import ICAETrainingArguments


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
def new_icae(make_icae, tiny_llama_config):
    """`new_icae(seed=0) -> (model, tokenizer)`: the shared tiny ICAE (random LoRA B, so every LoRA weight has a
    gradient) with 16 context tokens per 4 memory slots; the same seed gives the same weights."""

    def build(seed=0):
        torch.manual_seed(seed)
        return make_icae(tiny_llama_config, mean_compression_rate=4)

    return build


@pytest.fixture
def make_args(tmp_path):
    """`make_args(**overrides) -> ICAETrainingArguments` writing under the test's `tmp_path`."""
    return lambda **overrides: training_args(overrides.pop("output_dir", tmp_path / "out"), **overrides)


@pytest.fixture
def pretraining_data(new_icae, make_args):
    """Eight pretraining examples, built with the tokenizer of `new_icae()`."""
    model, tokenizer = new_icae()
    texts = Dataset.from_dict({"text": generate_corpus(8, seed=1)})
    return prepare_pretraining_dataset(texts, tokenizer, model, make_args())
