import math

import pytest
import torch
from datasets import Dataset, load_dataset

from context_compression.data import PWC_DEV_PATH
from context_compression.data.instruction import prepare_instruction_dataset
from context_compression.trainers import ICAEDataCollator

MEMORY, RATE, WINDOW = 4, 2, 50


@pytest.fixture
def pwc():
    return load_dataset("json", data_files=str(PWC_DEV_PATH), split="train")


def test_pwc_examples_follow_the_chat_template(icae, pwc):
    model, tokenizer = icae
    examples = prepare_instruction_dataset(pwc, tokenizer, model, max_context_length=WINDOW)
    assert examples.column_names == ["context_input_ids", "input_ids", "labels"]
    assert len(examples) == len(pwc) == 6
    for row, example in zip(pwc, examples):
        context = tokenizer(row["input"], add_special_tokens=False)["input_ids"][:WINDOW]
        assert example["context_input_ids"] == context
        slots = math.ceil(WINDOW / (MEMORY * RATE)) * MEMORY
        prompt_length = example["labels"].count(-100)
        expected_prompt = f"<s><|user|>\n{'<MEM>' * slots}<FT>{row['prompt']}</s>\n<|assistant|>\n"
        assert tokenizer.decode(example["input_ids"][:prompt_length]) == expected_prompt
        answer = tokenizer(row["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert example["input_ids"][prompt_length:] == answer
        assert example["labels"] == [-100] * prompt_length + answer


def test_training_prompt_is_the_inference_prompt_and_trains(icae, pwc):
    model, tokenizer = icae
    examples = prepare_instruction_dataset(pwc.select(range(2)), tokenizer, model, max_context_length=WINDOW)
    batch = ICAEDataCollator(pad_token_id=tokenizer.pad_token_id)(examples.to_list())
    with torch.no_grad():
        compressed = model.compress(batch["context_input_ids"], batch["context_attention_mask"])
        for i, (row, example) in enumerate(zip(pwc, examples)):
            inference = model.prepare_prompt(tokenizer, row["prompt"], compressed=compressed.select(i), mode="ft")
            prompt_length = example["labels"].count(-100)
            assert inference["input_ids"][0].tolist() == example["input_ids"][:prompt_length]
        loss = model(**batch).loss
    assert torch.isfinite(loss)


def test_contexts_default_to_the_models_limit(icae, pwc):
    model, tokenizer = icae
    examples = prepare_instruction_dataset(pwc.select([0]), tokenizer, model)
    full = tokenizer(pwc[0]["input"], add_special_tokens=False)["input_ids"]
    assert len(full) > model.config.max_context_length
    assert examples[0]["context_input_ids"] == full[: model.config.max_context_length]


def test_bad_input_is_refused(icae):
    model, tokenizer = icae
    with pytest.raises(ValueError, match="answer"):
        prepare_instruction_dataset(Dataset.from_dict({"input": ["x"], "prompt": ["y"]}), tokenizer, model)
    with pytest.raises(ValueError, match="empty `input`"):
        prepare_instruction_dataset(
            Dataset.from_dict({"input": [""], "prompt": ["y"], "answer": ["z"]}), tokenizer, model
        )
