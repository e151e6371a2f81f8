"""ICAE pretraining examples from raw text: autoencoding, and LM continuation with probability `lm_ratio`.

Each text becomes one example, as in the original ICAE:

    autoencoding:   context = a random window of the text        decoder = [MEM]*k <AE> | window </s>
    continuation:   context = the window, continuation = the rest decoder = [MEM]*k (<LM>) | continuation

where `|` separates the prompt (no loss) from the answer (loss, but for the first `leave_tokens_for_lm`
continuation tokens) and `k = num_segments(len(window)) * num_memory_tokens`. The draws for row `i` come from a
generator seeded with `(seed, i)`, so the same dataset and seed always give the same examples, in any process.
"""

import random

from datasets import Dataset
from datasets.fingerprint import Hasher

from ..modeling.icae.modeling_icae import build_prompt_ids, num_segments


def prepare_pretraining_dataset(
    dataset: Dataset, tokenizer, model, args, *, seed: int | None = None, num_proc: int | None = None
) -> Dataset:
    """
    Map a dataset with a `text` column to ICAE pretraining examples (`context_input_ids`, `input_ids`, `labels`).

    Args:
        dataset (`datasets.Dataset`): rows with a `text` column; texts that tokenize to nothing are dropped.
        tokenizer: the tokenizer saved with `model` (it knows the memory and AE/LM tokens).
        model (`ICAEForCausalLM`): gives the segment size and builds the decoder prompts.
        args (`ICAETrainingArguments`): `lm_ratio`, `min_tokens_for_lm`, `leave_tokens_for_lm`,
            `add_special_token_for_lm` and `model_max_length` (the longest window).
        seed (`int`, *optional*): seed of the per-row draws; defaults to `args.data_seed`, else `args.seed`.
        num_proc (`int`, *optional*): processes for tokenization.
    """
    if "text" not in dataset.column_names:
        raise ValueError(f"Pretraining needs a `text` column; the dataset has {dataset.column_names}.")
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token; autoencoding targets end with it. Set `tokenizer.eos_token`.")
    model.check_tokenizer(tokenizer)
    limit = model.config.max_context_length
    if limit is not None and args.model_max_length > limit:
        raise ValueError(
            f"`model_max_length={args.model_max_length}` exceeds the model's max_context_length={limit}; lower "
            "`model_max_length` so every window can be compressed."
        )
    if seed is None:
        seed = args.data_seed if args.data_seed is not None else args.seed

    tokenized = dataset.map(
        lambda batch: {"text_ids": tokenizer(batch["text"], add_special_tokens=False)["input_ids"]},
        batched=True,
        remove_columns=dataset.column_names,
        num_proc=num_proc,
        desc="Tokenizing",
    )
    tokenized = tokenized.filter(lambda ids: len(ids) > 0, input_columns="text_ids", num_proc=num_proc)

    options = {
        name: getattr(args, name)
        for name in (
            "lm_ratio",
            "min_tokens_for_lm",
            "leave_tokens_for_lm",
            "add_special_token_for_lm",
            "model_max_length",
        )
    }

    config = model.config

    def build(ids, index):
        return _pretraining_example(ids, random.Random(f"{seed}:{index}"), tokenizer, config, **options)

    # `datasets` cannot hash the tokenizer-holding transform reliably: name the result ourselves.
    fingerprint = Hasher.hash(
        [tokenized._fingerprint, "icae-pretraining", config.to_json_string(), options, seed]
    )
    return tokenized.map(
        build,
        input_columns="text_ids",
        with_indices=True,
        remove_columns=["text_ids"],
        new_fingerprint=fingerprint,
        desc="Building ICAE pretraining examples",
    )


def _pretraining_example(
    ids: list[int],
    rng: random.Random,
    tokenizer,
    config,
    lm_ratio: float,
    min_tokens_for_lm: int,
    leave_tokens_for_lm: int,
    add_special_token_for_lm: bool,
    model_max_length: int,
) -> dict[str, list[int]]:
    context, continuation = _draw_window(ids, rng, model_max_length, lm_ratio)
    num_slots = num_segments(len(context), config.segment_capacity) * config.num_memory_tokens
    if len(continuation) > min_tokens_for_lm:
        prompt = build_prompt_ids(config, tokenizer, num_slots, None, "lm", lm_token=add_special_token_for_lm)
        answer = continuation[:model_max_length]
        answer_labels = [-100] * leave_tokens_for_lm + answer[leave_tokens_for_lm:]
    else:
        prompt = build_prompt_ids(config, tokenizer, num_slots, None, "ae")
        answer = context + [tokenizer.eos_token_id]
        answer_labels = answer
    return {
        "context_input_ids": context,
        "input_ids": prompt + answer,
        "labels": [-100] * len(prompt) + answer_labels,
    }


def _draw_window(ids: list[int], rng: random.Random, length: int, lm_ratio: float) -> tuple[list[int], list[int]]:
    """
    (context, continuation) as the original ICAE draws them. Autoencoding (probability 1 - lm_ratio): a random
    window of at most `length` tokens, no continuation. Continuation: a random window followed by the rest, or,
    for a text no longer than `length`, a random split point.
    """
    if rng.random() >= lm_ratio:
        start = rng.randint(0, len(ids) - length) if len(ids) > length else 0
        return ids[start : start + length], []
    if len(ids) <= length:
        split = rng.randint(1, len(ids))
        return ids[:split], ids[split:]
    start = rng.randint(0, len(ids) - length)
    return ids[start : start + length], ids[start + length :]
