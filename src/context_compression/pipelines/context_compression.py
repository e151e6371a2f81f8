"""The `context-compression` pipeline: compress a context once, then answer, reconstruct or continue it.

This file ships inside checkpoints as a custom pipeline (`custom_pipelines` in config.json), so it imports only torch
and transformers and duck-types the model: any model with `compress`, `prepare_prompt` and `generate` (and
optionally `check_tokenizer`) works, whatever its compression method.
"""

import torch
from transformers import GenerationConfig, Pipeline
from transformers.utils import ModelOutput, logging


logger = logging.get_logger(__name__)

# Pipeline mode -> the model's prompt mode and the result key holding the generated text.
MODES = {
    "answer": ("ft", "answer"),
    "reconstruct": ("ae", "reconstruction"),
    "continue": ("lm", "continuation"),
}


class ContextCompressionPipeline(Pipeline):
    """
    Compress contexts into memory slots and generate from them.

    - `mode="answer"` (default): answer `question=` (one string) or `questions=` (a list; the context is compressed
      once and all questions are answered in one batched `generate`).
    - `mode="reconstruct"`: decode the context back from its memory (the autoencoding prompt).
    - `mode="continue"`: continue the context from its memory (the language-modelling prompt).

    A list of contexts is compressed `batch_size` at a time (default 1) in one batched `compress`. Every result
    reports `context_tokens`, `memory_slots` and `compression_ratio`; `return_compressed=True` adds the compressed
    context (one row), reusable with `model.prepare_prompt` and `model.generate`. Other keyword arguments
    (`max_new_tokens`, `do_sample`, `num_beams`, ...) go to `generate`.

    Example:
    ```python
    >>> import context_compression  # registers the task
    >>> from transformers import pipeline
    >>> pipe = pipeline("context-compression", model="path/to/icae", tokenizer="path/to/icae")
    >>> pipe("A long context ...", question="What is it about?", max_new_tokens=32)
    {'answer': '...', 'context_tokens': 512, 'memory_slots': 128, 'compression_ratio': 4.0}
    ```
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _pipeline_calls_generate = True
    _default_generation_config = GenerationConfig(max_new_tokens=128)

    def __init__(self, model, tokenizer=None, **kwargs):
        missing = [name for name in ("compress", "prepare_prompt", "generate") if not callable(getattr(model, name, None))]
        if missing:
            raise ValueError(
                f"{type(model).__name__} has no {', '.join(missing)}: the context-compression pipeline needs a "
                "context-compression model (such as ICAEForCausalLM), not a plain language model."
            )
        if tokenizer is None:
            raise ValueError("The context-compression pipeline needs a tokenizer: pass the one saved with the model.")
        super().__init__(model=model, tokenizer=tokenizer, **kwargs)
        if callable(getattr(self.model, "check_tokenizer", None)):
            self.model.check_tokenizer(self.tokenizer)

    def __call__(self, inputs, **kwargs):
        """
        Run on one context (a string; returns a dict) or a list of contexts (returns a list of dicts, compressing
        `batch_size` contexts per model call).
        """
        if isinstance(inputs, str):
            _check_contexts([inputs])
            return super().__call__(inputs, **kwargs)
        if not isinstance(inputs, (list, tuple)) or not inputs:
            raise ValueError(
                f"Pass a context string or a non-empty list of context strings, got {type(inputs).__name__}."
            )
        _check_contexts(inputs)
        batch_size = kwargs.pop("batch_size", None) or self._batch_size or 1
        kwargs.pop("num_workers", None)
        results = []
        for start in range(0, len(inputs), batch_size):
            # A tuple reaches `preprocess` whole, so its contexts share one `compress` and one `generate` call.
            results.extend(super().__call__(tuple(inputs[start : start + batch_size]), **kwargs))
        return results

    def _sanitize_parameters(
        self,
        question: str | None = None,
        questions: list[str] | None = None,
        mode: str | None = None,
        max_context_length: int | None = None,
        truncation: bool | None = None,
        return_compressed: bool | None = None,
        lm_token: bool | None = None,
        **generate_kwargs,
    ):
        """
        Split the call's arguments into preprocess / forward / postprocess parameters. Only arguments that were
        given are returned, so a call overrides what the pipeline was built with and keeps the rest.
        """
        preprocess_params, forward_params = {}, dict(generate_kwargs)
        if question is not None and questions is not None:
            raise ValueError("Pass either `question` (one string) or `questions` (a list of strings), not both.")
        if question is not None:
            if not isinstance(question, str):
                raise ValueError(f"`question` must be a string, got {type(question).__name__}; use `questions=` for a list.")
            preprocess_params.update(questions=[question], single_question=True)
        if questions is not None:
            if isinstance(questions, str) or not questions or not all(isinstance(q, str) for q in questions):
                raise ValueError("`questions` must be a non-empty list of strings; use `question=` for one string.")
            preprocess_params.update(questions=list(questions), single_question=False)
        if mode is not None:
            if mode not in MODES:
                raise ValueError(f"Unknown mode {mode!r}; use one of {sorted(MODES)}.")
            preprocess_params["mode"] = mode
        if max_context_length is not None:
            preprocess_params["max_context_length"] = max_context_length
        if truncation is not None:
            preprocess_params["truncation"] = truncation
        if return_compressed is not None:
            forward_params["return_compressed"] = return_compressed
        if lm_token is not None:
            forward_params["lm_token"] = lm_token
        return preprocess_params, forward_params, {}

    def preprocess(
        self,
        inputs,
        questions: list[str] | None = None,
        single_question: bool = True,
        mode: str = "answer",
        max_context_length: int | None = None,
        truncation: bool = False,
    ):
        """
        Check the request and tokenize the contexts into a right-padded batch, without special tokens, as the
        library's training data does.
        """
        if mode == "answer" and questions is None:
            raise ValueError(
                "mode='answer' needs `question=` or `questions=`; use mode='reconstruct' or mode='continue' to decode "
                "the context itself."
            )
        if mode != "answer" and questions is not None:
            raise ValueError(f"mode={mode!r} decodes the context itself and takes no question; drop `question(s)=`.")
        contexts = [inputs] if isinstance(inputs, str) else list(inputs)
        limit = max_context_length or getattr(self.model.config, "max_context_length", None)
        rows = self.tokenizer(contexts, add_special_tokens=False)["input_ids"]
        for row, ids in enumerate(rows):
            if limit is None or len(ids) <= limit:
                continue
            if not truncation:
                raise ValueError(
                    f"A context has {len(ids)} tokens, over max_context_length={limit}. Pass truncation=True to "
                    f"keep {limit} of them, or a larger `max_context_length` if the model allows it."
                )
            logger.warning(f"A context was truncated from {len(ids)} to {limit} tokens.")
            rows[row] = rows[row][:limit] if self.tokenizer.truncation_side == "right" else rows[row][-limit:]
        width = max(len(ids) for ids in rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return {
            "context_input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids in rows]),
            "context_attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in rows]),
            "questions": questions,
            "single_question": single_question,
            "single_context": isinstance(inputs, str),
            "mode": mode,
        }

    def _forward(self, model_inputs, return_compressed: bool = False, lm_token: bool = False, **generate_kwargs):
        """
        Compress all contexts in one call, then generate for every (context, question) pair in one batched call,
        each context's memory repeated once per question.
        """
        mode, questions = model_inputs["mode"], model_inputs["questions"]
        compressed = self.model.compress(model_inputs["context_input_ids"], model_inputs["context_attention_mask"])
        num_contexts = model_inputs["context_input_ids"].shape[0]
        per_context = len(questions) if questions else 1
        repeated = compressed
        if per_context > 1:
            repeated = compressed.select([row for row in range(num_contexts) for _ in range(per_context)])
        prompt_kwargs = {"lm_token": lm_token} if mode == "continue" else {}
        prompts = [q for _ in range(num_contexts) for q in questions] if questions else None
        prompt = self.model.prepare_prompt(
            self.tokenizer, prompt=prompts, compressed=repeated, mode=MODES[mode][0], **prompt_kwargs
        )
        overrides = {}
        if mode == "reconstruct" and not self._sets_length(generate_kwargs):
            # A reconstruction is as long as its context (plus end of sequence).
            overrides["max_new_tokens"] = int(compressed.context_lengths.max()) + 1
        output = self.model.generate(
            **prompt, compressed=repeated, **self._prepare_generate_kwargs(generate_kwargs, **overrides)
        )
        outputs = {
            "sequences": getattr(output, "sequences", output),
            "context_lengths": compressed.context_lengths,
            "memory_slots": compressed.memory_attention_mask.sum(dim=1),
            "num_prompts": num_contexts * per_context,
            **{key: model_inputs[key] for key in ("mode", "single_question", "single_context")},
        }
        if return_compressed:
            outputs["compressed"] = [compressed.select(row) for row in range(num_contexts)]
        return outputs

    def postprocess(self, model_outputs):
        """One dict per context: the generated text(s) and the compression figures."""
        texts = self.tokenizer.batch_decode(model_outputs["sequences"], skip_special_tokens=True)
        per_prompt = len(texts) // model_outputs["num_prompts"]  # > 1 with num_return_sequences
        generated = [texts[i : i + per_prompt] if per_prompt > 1 else texts[i] for i in range(0, len(texts), per_prompt)]
        num_contexts = len(model_outputs["context_lengths"])
        per_context = len(generated) // num_contexts
        key = MODES[model_outputs["mode"]][1]
        if model_outputs["mode"] == "answer" and not model_outputs["single_question"]:
            key = "answers"
        results = []
        for row in range(num_contexts):
            mine = generated[row * per_context : (row + 1) * per_context]
            context_tokens = int(model_outputs["context_lengths"][row])
            memory_slots = int(model_outputs["memory_slots"][row])
            result = {
                key: mine if key == "answers" else mine[0],
                "context_tokens": context_tokens,
                "memory_slots": memory_slots,
                "compression_ratio": context_tokens / memory_slots,
            }
            if "compressed" in model_outputs:
                result["compressed"] = model_outputs["compressed"][row]
            results.append(result)
        return results[0] if model_outputs["single_context"] else results

    def _sets_length(self, generate_kwargs: dict) -> bool:
        """Whether the caller (this call, the pipeline's construction or the model) chose the output length."""
        if "generation_config" not in generate_kwargs:
            generate_kwargs = {**self._generate_kwargs, **generate_kwargs}
        params = self._get_set_generation_params(generate_kwargs)
        return "max_new_tokens" in params or "max_length" in params

    def _ensure_tensor_on_device(self, inputs, device):
        """Move compressed contexts with their own `to`, so they keep their class (and methods such as `save`)."""
        if isinstance(inputs, ModelOutput) and callable(getattr(inputs, "to", None)):
            return inputs.to(device)
        return super()._ensure_tensor_on_device(inputs, device)


def _check_contexts(contexts) -> None:
    """Reject non-strings and empty contexts before batching, naming each by its place in the whole input."""
    for row, context in enumerate(contexts):
        if not isinstance(context, str):
            raise ValueError(f"Context {row} is a {type(context).__name__}; contexts must be strings.")
        if not context.strip():
            raise ValueError(f"Context {row} is empty; give every context some text to compress.")
