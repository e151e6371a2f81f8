"""ICAE instruction fine-tuning examples (PwC format: `input` context, `prompt` instruction, `answer`).

The decoder sequence is the prompt the model will see at inference, `model.prepare_prompt(..., mode="ft")` (the
tokenizer's chat template around a user turn of memory placeholders + FT token + instruction, with the assistant
prefix), followed by the answer and eos; only the answer and eos carry loss. Building both from the same function
keeps training and inference prompts identical.
"""

from datasets import Dataset
from datasets.fingerprint import Hasher

from ..modeling.icae.modeling_icae import build_prompt_ids, num_segments


COLUMNS = ("input", "prompt", "answer")


def prepare_instruction_dataset(
    dataset: Dataset, tokenizer, model, *, max_context_length: int | None = None
) -> Dataset:
    """
    Map a dataset with `input`, `prompt` and `answer` columns to ICAE examples (`context_input_ids`, `input_ids`,
    `labels`).

    Args:
        dataset (`datasets.Dataset`): PwC-style rows, e.g. `datasets.load_dataset("json", data_files=PWC_DEV_PATH)`.
        tokenizer: the tokenizer saved with `model`; its chat template (if any) frames the user turn.
        model (`ICAEForCausalLM`): gives the segment size and builds the prompt.
        max_context_length (`int`, *optional*): contexts are cut to their first this many tokens; defaults to the
            model's `max_context_length`.
    """
    missing = [column for column in COLUMNS if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"Instruction data needs the columns {list(COLUMNS)}; {missing} missing from {dataset.column_names}."
        )
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token; answers end with it. Set `tokenizer.eos_token`.")
    model.check_tokenizer(tokenizer)
    config = model.config
    if max_context_length is None:
        max_context_length = config.max_context_length

    def build(context: str, prompt: str, answer: str) -> dict[str, list[int]]:
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"][:max_context_length]
        if not context_ids:
            raise ValueError(f"An example has an empty `input` (prompt {prompt!r}); drop it or give it a context.")
        num_slots = num_segments(len(context_ids), config.segment_capacity) * config.num_memory_tokens
        prompt_ids = build_prompt_ids(config, tokenizer, num_slots, prompt, "ft")
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return {
            "context_input_ids": context_ids,
            "input_ids": prompt_ids + answer_ids,
            "labels": [-100] * len(prompt_ids) + answer_ids,
        }

    # `datasets` cannot hash the tokenizer-holding transform reliably: name the result ourselves.
    fingerprint = Hasher.hash(
        [dataset._fingerprint, "icae-instruction", config.to_json_string(), tokenizer, max_context_length]
    )
    return dataset.map(
        build,
        input_columns=list(COLUMNS),
        remove_columns=dataset.column_names,
        new_fingerprint=fingerprint,
        desc="Building ICAE instruction examples",
    )
