import copy
import math

import pytest
import torch
from datasets import Dataset

from context_compression import CompressedContext
from context_compression.data import generate_corpus
from context_compression.data.trajectory import prepare_trajectory_dataset, trajectory_examples
from context_compression.trainers import ICAEDataCollator, ICAETrainer, ICAETrainingArguments

MEMORY, RATE = 4, 2


def trajectory(seed, turns=3):
    """system, then (observation, action) pairs; the second observation is too short to compress."""
    documents = generate_corpus(turns, seed=seed)
    messages = [{"role": "system", "content": "You fix bugs."}]
    for turn, document in enumerate(documents):
        observation = "ok" if turn == 1 else document[:300]
        messages += [{"role": "user", "content": observation}, {"role": "assistant", "content": f"run step {turn}"}]
    return messages


def test_one_example_per_action_with_the_turns_so_far(icae):
    model, tokenizer = icae
    messages = trajectory(seed=0)
    examples = trajectory_examples(messages, tokenizer, model)
    assert len(examples) == 3
    ids = [tokenizer(m["content"], add_special_tokens=False)["input_ids"] for m in messages]
    assert [e["context_input_ids"] for e in examples] == [[ids[1]], [ids[1]], [ids[1], ids[5]]]

    def memory(turn):
        return "<MEM>" * (math.ceil(len(ids[turn]) / (MEMORY * RATE)) * MEMORY)

    last = examples[2]
    prompt_length = last["labels"].count(-100)
    assert tokenizer.decode(last["input_ids"][:prompt_length]) == (
        "<s><|system|>\nYou fix bugs.</s>\n"
        f"<|user|>\n{memory(1)}</s>\n<|assistant|>\nrun step 0</s>\n"
        "<|user|>\nok</s>\n<|assistant|>\nrun step 1</s>\n"
        f"<|user|>\n{memory(5)}</s>\n<|assistant|>\n"
    )
    answer = ids[6] + [tokenizer.eos_token_id]
    assert last["input_ids"][prompt_length:] == answer and last["labels"][prompt_length:] == answer


def test_batched_turns_equal_each_example_alone(icae):
    """model.compress_turns on a padded batch of turns = each example's turns compressed alone and concatenated."""
    model, tokenizer = icae
    examples = trajectory_examples(trajectory(seed=1), tokenizer, model) + trajectory_examples(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], tokenizer, model
    )
    batch = ICAEDataCollator(pad_token_id=tokenizer.pad_token_id)(examples)
    assert batch["context_turns"].tolist() == [1, 1, 2, 0]
    with torch.no_grad():
        compressed = model.compress_turns(batch["context_input_ids"], batch["context_attention_mask"], batch["context_turns"])
        batch_loss = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            context_input_ids=batch["context_input_ids"],
            context_attention_mask=batch["context_attention_mask"],
            context_turns=batch["context_turns"],
        ).loss
        losses, counts = [], []
        for row, example in enumerate(examples):
            turns = [model.compress(torch.tensor([turn])) for turn in example["context_input_ids"]]
            alone = CompressedContext.concatenate(*turns) if turns else None
            if alone is not None:
                torch.testing.assert_close(
                    compressed.select(row).memory_embeds, alone.memory_embeds, atol=1e-5, rtol=1e-4
                )
            else:
                assert compressed.num_slots[row] == 0
            losses.append(
                model(
                    input_ids=torch.tensor([example["input_ids"]]),
                    labels=torch.tensor([example["labels"]]),
                    compressed=alone,
                ).loss
            )
            counts.append(sum(label != -100 for label in example["labels"][1:]))
    expected = sum(loss * count for loss, count in zip(losses, counts)) / sum(counts)
    torch.testing.assert_close(batch_loss, expected, atol=1e-5, rtol=1e-5)


def test_trainer_learns_from_trajectories(icae, tmp_path):
    model, tokenizer = icae
    dataset = prepare_trajectory_dataset(
        Dataset.from_dict({"messages": [trajectory(seed=s) for s in range(3)]}), tokenizer, model
    )
    assert len(dataset) == 9
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n or "memory_token_embed" in n}
    args = ICAETrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        save_strategy="no",
        per_device_train_batch_size=3,
        max_steps=3,
        learning_rate=1e-2,
        logging_steps=1,
    )
    trainer = ICAETrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    assert math.isfinite(trainer.evaluate(dataset.select(range(3)))["eval_loss"])


def test_bad_trajectories_are_refused(icae):
    model, tokenizer = icae
    with pytest.raises(ValueError, match="reserved"):
        trajectory_examples([{"role": "user", "content": "see <MEM> here"}], tokenizer, model)
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        trajectory_examples(trajectory(seed=0), plain, model)
    with pytest.raises(ValueError, match="messages"):
        prepare_trajectory_dataset(Dataset.from_dict({"text": ["x"]}), tokenizer, model)
