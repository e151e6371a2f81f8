"""Turn-by-turn agent trajectories with accumulated memory (as in JetBrains-Research/ICAE-for-SWE-agents).

An agent's conversation alternates user turns (observations: tool output, files, logs) and assistant turns
(actions). Each assistant turn becomes one training example: the decoder reads the conversation so far, in the
tokenizer's chat template, with every long user turn replaced by its memory placeholders, and predicts the action:

    <user> [MEM]*k1 </s> <assistant> action 1 </s> <user> [MEM]*k2 </s> <assistant> | action 2 </s>

Each user turn is compressed on its own (ceil(n_i / segment capacity) segments) and the memories of all turns so
far are concatenated in order ([`CompressedContext.concatenate`]), as an agent would accumulate them at inference.
Examples keep one context per compressed turn; [`ICAEDataCollator`] batches them with `context_turns` and
[`ICAEForCausalLM.compress_turns`] rebuilds each example's accumulated memory inside the model's forward.
"""

from datasets import Dataset
from datasets.fingerprint import Hasher

from ..modeling.icae.modeling_icae import num_segments


def trajectory_examples(
    messages: list[dict[str, str]],
    tokenizer,
    model,
    *,
    min_tokens_to_compress: int | None = None,
    max_context_length: int | None = None,
) -> list[dict[str, list]]:
    """
    One example per assistant turn of a conversation (`[{"role": ..., "content": ...}, ...]`, an optional system
    message first).

    Args:
        messages: the trajectory; user turns of at least `min_tokens_to_compress` tokens are compressed, the rest
            (and all system and assistant turns) stay text.
        tokenizer: the tokenizer saved with `model`, with a chat template.
        model (`ICAEForCausalLM`): gives the segment size and the placeholder token.
        min_tokens_to_compress (`int`, *optional*): defaults to `num_memory_tokens`, below which compressing would
            lengthen the turn.
        max_context_length (`int`, *optional*): each compressed turn keeps its first this many tokens; defaults to
            the model's `max_context_length`.

    Returns:
        dicts with `context_input_ids` (one token list per compressed user turn so far, in order), `input_ids`
        (the rendered conversation, then the assistant turn and eos) and `labels` (the assistant turn and eos only).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("Trajectories are rendered with the tokenizer's chat template; this tokenizer has none.")
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos token; assistant turns end with it. Set `tokenizer.eos_token`.")
    model.check_tokenizer(tokenizer)
    config = model.config
    threshold = config.num_memory_tokens if min_tokens_to_compress is None else min_tokens_to_compress
    limit = config.max_context_length if max_context_length is None else max_context_length

    rendered, contexts, examples = [], [], []
    for message in messages:
        role, content = message["role"], message["content"]
        reserved = [token for token in config.special_tokens() if token in content]
        if reserved:
            raise ValueError(f"A {role} message contains the reserved token(s) {reserved}; remove them from the text.")
        if role == "assistant":
            prompt = _render(tokenizer, rendered, add_generation_prompt=True)
            answer = tokenizer(content, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            examples.append(
                {
                    "context_input_ids": [list(turn) for turn in contexts],
                    "input_ids": prompt + answer,
                    "labels": [-100] * len(prompt) + answer,
                }
            )
        elif role == "user":
            ids = tokenizer(content, add_special_tokens=False)["input_ids"][:limit]
            if len(ids) >= max(threshold, 1):
                contexts.append(ids)
                content = config.memory_token * (
                    num_segments(len(ids), config.segment_capacity) * config.num_memory_tokens
                )
        rendered.append({"role": role, "content": content})
    return examples


def _render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prepare_trajectory_dataset(dataset: Dataset, tokenizer, model, **kwargs) -> Dataset:
    """
    Map a dataset with a `messages` column (one trajectory per row) to one row per assistant turn, with
    [`trajectory_examples`] (whose keyword arguments `kwargs` are).
    """
    if "messages" not in dataset.column_names:
        raise ValueError(f"Trajectories need a `messages` column; the dataset has {dataset.column_names}.")

    def build(batch):
        rows = [
            row for messages in batch["messages"] for row in trajectory_examples(messages, tokenizer, model, **kwargs)
        ]
        return {key: [row[key] for row in rows] for key in ("context_input_ids", "input_ids", "labels")}

    # The transform holds the model, which `datasets` should neither hash nor pickle: name the result ourselves.
    fingerprint = Hasher.hash(
        [dataset._fingerprint, "icae-trajectory", model.config.to_json_string(), tokenizer, kwargs]
    )
    return dataset.map(
        build,
        batched=True,
        remove_columns=dataset.column_names,
        new_fingerprint=fingerprint,
        desc="Building ICAE trajectory examples",
    )
