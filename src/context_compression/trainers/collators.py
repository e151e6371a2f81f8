"""Batch padding for ICAE examples: an encoder context and a decoder sequence per example."""

import math
from dataclasses import dataclass

import torch


@dataclass
class ICAEDataCollator:
    r"""
    Pad ICAE examples into a batch for [`ICAEForCausalLM.forward`].

    Each example holds `context_input_ids` (the text to compress), `input_ids` (the decoder sequence, with one memory
    placeholder per memory slot) and usually `labels` (aligned with `input_ids`, -100 where there is no loss), as
    lists or 1-D tensors. Everything is right-padded: the contexts with `pad_token_id` plus a
    `context_attention_mask`, the decoder sequences with `pad_token_id` plus an `attention_mask`, the labels with
    -100 so padding carries no loss. Right padding keeps each row's positions as they would be alone, which is what
    training needs (generation wants left-padded prompts instead; see `ICAEForCausalLM.prepare_prompt`).

    For turn-by-turn trajectories ([`~context_compression.data.trajectory_examples`]) `context_input_ids` is a list of
    contexts per example, one per compressed turn: the batch then holds every turn as a row of `context_input_ids`,
    in order, and `context_turns` says how many rows belong to each example.

    Args:
        pad_token_id (`int`, defaults to 0):
            Id written into padded positions; any id of the vocabulary works since padding is masked.
        pad_to_multiple_of (`int`, *optional*):
            Round padded lengths up to a multiple of this (for tensor-core friendly shapes).

    Example:

    ```python
    >>> from context_compression.trainers import ICAEDataCollator
    >>> collator = ICAEDataCollator(pad_token_id=0)
    >>> batch = collator([
    ...     {"context_input_ids": [5, 6, 7], "input_ids": [9, 9, 4], "labels": [-100, -100, 4]},
    ...     {"context_input_ids": [5], "input_ids": [9, 4, 8, 2], "labels": [-100, 4, 8, 2]},
    ... ])
    >>> batch["context_input_ids"]
    tensor([[5, 6, 7],
            [5, 0, 0]])
    >>> batch["attention_mask"]
    tensor([[1, 1, 1, 0],
            [1, 1, 1, 1]])
    >>> batch["labels"]
    tensor([[-100, -100,    4, -100],
            [-100,    4,    8,    2]])

    ```
    """

    pad_token_id: int = 0
    pad_to_multiple_of: int | None = None

    def __post_init__(self):
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"`pad_to_multiple_of` must be a positive integer or None, got {self.pad_to_multiple_of}.")

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        missing = {"context_input_ids", "input_ids"} - set(examples[0])
        if missing:
            raise ValueError(
                f"ICAE examples need {sorted(missing)}; build them with prepare_pretraining_dataset, "
                "prepare_instruction_dataset or trajectory_examples."
            )
        batch = {}
        contexts = [example["context_input_ids"] for example in examples]
        if _is_nested(contexts[0]):
            batch["context_turns"] = torch.tensor([len(turns) for turns in contexts])
            contexts = [turn for turns in contexts for turn in turns]
        if contexts:
            batch["context_input_ids"], batch["context_attention_mask"] = self._pad(contexts, self.pad_token_id)
        batch["input_ids"], batch["attention_mask"] = self._pad([e["input_ids"] for e in examples], self.pad_token_id)
        if "labels" in examples[0]:
            batch["labels"], _ = self._pad([e["labels"] for e in examples], -100)
        return batch

    def _pad(self, rows, value: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [torch.as_tensor(row, dtype=torch.long) for row in rows]
        width = max(len(row) for row in rows)
        if self.pad_to_multiple_of is not None:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        padded = torch.full((len(rows), width), value, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            padded[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return padded, mask


def _is_nested(context) -> bool:
    """Whether one example's context is a list of turns rather than one token sequence."""
    if hasattr(context, "ndim"):
        return context.ndim == 2
    return len(context) == 0 or isinstance(context[0], (list, tuple)) or getattr(context[0], "ndim", 0) == 1
