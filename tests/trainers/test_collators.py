import doctest

import pytest
import torch

from context_compression.trainers import ICAEDataCollator, collators


def test_docstring_example_runs():
    result = doctest.testmod(collators, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_pads_right_with_masks_and_ignored_labels():
    examples = [
        {"context_input_ids": torch.tensor([7, 8]), "input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
        {"context_input_ids": [9, 9, 9, 9], "input_ids": [4], "labels": [4]},
    ]
    batch = ICAEDataCollator(pad_token_id=5, pad_to_multiple_of=4)(examples)
    assert batch["context_input_ids"].tolist() == [[7, 8, 5, 5], [9, 9, 9, 9]]
    assert batch["context_attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch["input_ids"].tolist() == [[1, 2, 3, 5], [4, 5, 5, 5]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100], [4, -100, -100, -100]]


def test_turns_become_rows_with_counts():
    examples = [
        {"context_input_ids": [[1, 2], [3]], "input_ids": [1], "labels": [1]},
        {"context_input_ids": [], "input_ids": [1, 2], "labels": [1, 2]},
        {"context_input_ids": [[4, 5, 6]], "input_ids": [1], "labels": [1]},
    ]
    batch = ICAEDataCollator()(examples)
    assert batch["context_turns"].tolist() == [2, 0, 1]
    assert batch["context_input_ids"].tolist() == [[1, 2, 0], [3, 0, 0], [4, 5, 6]]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        ICAEDataCollator(pad_to_multiple_of=0)
    with pytest.raises(ValueError, match="context_input_ids"):
        ICAEDataCollator()([{"input_ids": [1], "labels": [1]}])


def test_batch_loss_is_the_token_weighted_mean_of_row_losses(new_icae, pretraining_data):
    """Padding changes nothing: the batch loss averages over the real target tokens of both rows."""
    model, _ = new_icae()
    collator = ICAEDataCollator(pad_token_id=0)
    rows = [pretraining_data[0], pretraining_data[5]]
    assert len(rows[0]["input_ids"]) != len(rows[1]["input_ids"])  # padding is exercised
    losses, counts = [], []
    with torch.no_grad():
        for row in rows:
            losses.append(model(**collator([row])).loss)
            counts.append(sum(label != -100 for label in row["labels"][1:]))  # the model shifts labels
        batch_loss = model(**collator(rows)).loss
    expected = (losses[0] * counts[0] + losses[1] * counts[1]) / (counts[0] + counts[1])
    torch.testing.assert_close(batch_loss, expected)
