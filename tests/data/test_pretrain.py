import math

import pytest
from datasets import Dataset

from context_compression.data import generate_corpus
from context_compression.data.pretrain import prepare_pretraining_dataset
from context_compression.trainers import ICAETrainingArguments

MEMORY, RATE = 4, 2  # the shared `icae` fixture: 8 context tokens per segment


@pytest.fixture
def make_args(tmp_path):
    def make(**overrides):
        kwargs = dict(
            output_dir=str(tmp_path),
            use_cpu=True,
            report_to=[],
            model_max_length=40,
            min_tokens_for_lm=8,
            leave_tokens_for_lm=3,
            seed=0,
        )
        return ICAETrainingArguments(**{**kwargs, **overrides})

    return make


@pytest.fixture
def texts():
    # Short and long documents: some fit the 40-token window whole, most do not.
    return Dataset.from_dict({"text": ["The baker in Lisbon.", *generate_corpus(20, seed=2)]})


def token_ids(tokenizer, dataset):
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in dataset["text"]]


def is_window(part, whole):
    return any(whole[i : i + len(part)] == part for i in range(len(whole) - len(part) + 1))


def test_autoencoding_examples(icae, make_args, texts):
    model, tokenizer = icae
    config = model.config
    examples = prepare_pretraining_dataset(texts, tokenizer, model, make_args(lm_ratio=0.0))
    assert examples.column_names == ["context_input_ids", "input_ids", "labels"]
    assert len(examples) == len(texts)
    for ids, example in zip(token_ids(tokenizer, texts), examples):
        context = example["context_input_ids"]
        assert len(context) == min(len(ids), 40) and is_window(context, ids)
        slots = math.ceil(len(context) / (MEMORY * RATE)) * MEMORY
        prompt = [config.memory_token_id] * slots + [config.ae_token_id]
        assert example["input_ids"] == prompt + context + [tokenizer.eos_token_id]
        assert example["labels"] == [-100] * len(prompt) + context + [tokenizer.eos_token_id]
    assert examples[0]["context_input_ids"] == token_ids(tokenizer, texts)[0]  # short texts are kept whole


def test_continuation_examples(icae, make_args, texts):
    model, tokenizer = icae
    config = model.config
    examples = prepare_pretraining_dataset(
        texts, tokenizer, model, make_args(lm_ratio=1.0, add_special_token_for_lm=True)
    )
    continued = 0
    for ids, example in zip(token_ids(tokenizer, texts), examples):
        context = example["context_input_ids"]
        slots = math.ceil(len(context) / (MEMORY * RATE)) * MEMORY
        if example["input_ids"][slots] == config.ae_token_id:  # continuation too short: autoencoding instead
            continue
        continued += 1
        prompt = [config.memory_token_id] * slots + [config.lm_token_id]
        assert example["input_ids"][: len(prompt)] == prompt
        continuation = example["input_ids"][len(prompt) :]
        assert 8 < len(continuation) <= 40
        assert is_window(context + continuation, ids)
        assert example["labels"] == [-100] * (len(prompt) + 3) + continuation[3:]
    assert continued > len(texts) / 2


def test_mixed_objectives_without_lm_token(icae, make_args, texts):
    model, tokenizer = icae
    examples = prepare_pretraining_dataset(texts, tokenizer, model, make_args(lm_ratio=0.5))
    has_ae = [model.config.ae_token_id in example["input_ids"] for example in examples]
    assert 0 < sum(has_ae) < len(examples)
    assert all(model.config.lm_token_id not in example["input_ids"] for example in examples)


def test_draws_are_reproducible_per_row(icae, make_args, texts):
    """Same seed, same examples; row i does not depend on the other rows, so a resumed run rebuilds it identically."""
    model, tokenizer = icae
    args = make_args(lm_ratio=0.5)
    full = prepare_pretraining_dataset(texts, tokenizer, model, args)
    assert full.to_list() == prepare_pretraining_dataset(texts, tokenizer, model, args).to_list()
    assert (
        full.select(range(5)).to_list()
        == prepare_pretraining_dataset(texts.select(range(5)), tokenizer, model, args).to_list()
    )
    assert full.to_list() != prepare_pretraining_dataset(texts, tokenizer, model, args, seed=1).to_list()


def test_empty_texts_are_dropped(icae, make_args):
    model, tokenizer = icae
    examples = prepare_pretraining_dataset(
        Dataset.from_dict({"text": ["", "Some text.", ""]}), tokenizer, model, make_args()
    )
    assert len(examples) == 1


def test_bad_input_is_refused(icae, make_args, texts):
    model, tokenizer = icae
    with pytest.raises(ValueError, match="text"):
        prepare_pretraining_dataset(Dataset.from_dict({"content": ["x"]}), tokenizer, model, make_args())
    with pytest.raises(ValueError, match="model_max_length"):
        prepare_pretraining_dataset(texts, tokenizer, model, make_args(model_max_length=10_000))
    model.config.memory_token_id += 100  # the tokenizer no longer matches the model
    with pytest.raises(ValueError, match="<MEM>"):
        prepare_pretraining_dataset(texts, tokenizer, model, make_args())
