"""Training ICAE with the `Trainer`: its arguments, and a trainer that only sets up what ICAE needs.

The loss is the model's own (`ICAEForCausalLM.forward` with `context_input_ids` and `labels`), so the stock
training loop, gradient accumulation, `accelerate launch` and checkpoint resumption all apply unchanged. What
differs is the set-up: which model to start from, which parameters train, and how batches are padded.
"""

import os
from dataclasses import dataclass, field

from transformers import AutoConfig, PreTrainedModel, Trainer, TrainingArguments

from ..modeling.icae import ICAEConfig, ICAEForCausalLM
from ..modeling.icae.convert_icae_original_to_hf import load_original_state_dict
from .collators import ICAEDataCollator


@dataclass
class ICAETrainingArguments(TrainingArguments):
    r"""
    [`TrainingArguments`] plus the ICAE recipe: the pretraining mix of autoencoding and LM continuation, the
    context window, and the checkpoint to start from. Field names and defaults follow the original ICAE code.
    """

    num_memory_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Memory slots per segment of a model the trainer builds from a base LM. With an ICAE model, "
            "leave unset or give its config's value."
        },
    )
    mean_compression_rate: int | None = field(
        default=None,
        metadata={
            "help": "Context tokens per memory slot of a model the trainer builds from a base LM. With an ICAE "
            "model, leave unset or give its config's value."
        },
    )
    lm_ratio: float = field(
        default=0.0,
        metadata={"help": "Share of pretraining examples drawn as LM continuation rather than autoencoding."},
    )
    min_tokens_for_lm: int = field(
        default=64,
        metadata={
            "help": "An LM example needs a continuation longer than this; shorter ones fall back to autoencoding."
        },
    )
    leave_tokens_for_lm: int = field(
        default=8,
        metadata={"help": "First continuation tokens of an LM example that carry no loss."},
    )
    add_special_token_for_lm: bool = field(
        default=False,
        metadata={"help": "End the prompt of LM examples with the LM token."},
    )
    model_max_length: int = field(
        default=5120,
        metadata={
            "help": "Longest context: pretraining texts are cut to a random window of this many tokens (and LM "
            "continuations to as many)."
        },
    )
    restore_from: str | None = field(
        default=None,
        metadata={
            "help": "Start from these weights: a folder saved by `ICAEForCausalLM.save_pretrained` (then pass no "
            "model), or a safetensors file in the original ICAE format (loaded into the given model)."
        },
    )
    freeze_backbone: bool = field(
        default=True,
        metadata={
            "help": "Train only the encoder's LoRA and the memory/AE/LM/FT embeddings, as ICAE does. The decoder is "
            "the backbone itself, so training the backbone also changes how memory is read."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        for name in ("num_memory_tokens", "mean_compression_rate"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be a positive integer or None (take the model's), got {value!r}.")
        if not 0.0 <= self.lm_ratio <= 1.0:
            raise ValueError(f"`lm_ratio` is a probability; give a value in [0, 1], not {self.lm_ratio}.")
        if self.model_max_length < 1:
            raise ValueError(f"`model_max_length` must be positive, got {self.model_max_length}.")
        if self.min_tokens_for_lm < 0 or self.leave_tokens_for_lm < 0:
            raise ValueError(
                f"`min_tokens_for_lm` ({self.min_tokens_for_lm}) and `leave_tokens_for_lm` "
                f"({self.leave_tokens_for_lm}) cannot be negative."
            )
        if self.leave_tokens_for_lm > self.min_tokens_for_lm:
            raise ValueError(
                f"`leave_tokens_for_lm={self.leave_tokens_for_lm}` exceeds `min_tokens_for_lm="
                f"{self.min_tokens_for_lm}`, so an LM example could have no token with loss; raise "
                "`min_tokens_for_lm` or lower `leave_tokens_for_lm`."
            )
        if self.restore_from is not None and not os.path.exists(self.restore_from):
            raise ValueError(f"`restore_from={self.restore_from!r}` does not exist; give an ICAE folder or file.")


class ICAETrainer(Trainer):
    """
    [`Trainer`] for [`ICAEForCausalLM`]. On top of `Trainer` it

    - builds the model when given a base causal LM (or its path) instead of an ICAE, adding the memory and
      AE/LM/FT tokens to `processing_class`, or loads it from `args.restore_from`;
    - freezes the backbone (`args.freeze_backbone`), so only the LoRA encoder and the memory embeddings train;
    - pads batches with [`ICAEDataCollator`] unless given another collator (trajectory batches carry
      `context_turns`, which the model's forward compresses turn by turn).

    Datasets come from [`~context_compression.data.prepare_pretraining_dataset`],
    [`~context_compression.data.prepare_instruction_dataset`] or
    [`~context_compression.data.prepare_trajectory_dataset`].
    """

    def __init__(
        self, model=None, args: ICAETrainingArguments | None = None, data_collator=None, processing_class=None, **kwargs
    ):
        args = args if args is not None else ICAETrainingArguments()
        if not isinstance(args, ICAETrainingArguments):
            raise ValueError(
                f"ICAETrainer needs ICAETrainingArguments, got {type(args).__name__}; build the arguments with "
                "`ICAETrainingArguments(...)`."
            )
        model = _resolve_model(model, args, processing_class)
        for name, param in model.named_parameters():
            param.requires_grad = not args.freeze_backbone or "lora_" in name or name.startswith("memory_token_embed.")
        if processing_class is not None and hasattr(processing_class, "convert_tokens_to_ids"):
            model.check_tokenizer(processing_class)
        if data_collator is None:
            data_collator = ICAEDataCollator(pad_token_id=_pad_token_id(model, processing_class))
        super().__init__(
            model=model, args=args, data_collator=data_collator, processing_class=processing_class, **kwargs
        )


def _resolve_model(model, args: ICAETrainingArguments, tokenizer) -> ICAEForCausalLM:
    """The ICAE to train: `model` as given, wrapped from a base LM, or restored from `args.restore_from`."""
    overrides = {
        name: getattr(args, name)
        for name in ("num_memory_tokens", "mean_compression_rate")
        if getattr(args, name) is not None
    }
    restore_folder = args.restore_from is not None and os.path.isdir(args.restore_from)
    if restore_folder:
        if model is not None:
            raise ValueError(
                f"`restore_from={args.restore_from!r}` is an ICAE folder, which holds the whole model; pass "
                "`model=None`, or pass the model and no `restore_from`."
            )
        model = ICAEForCausalLM.from_pretrained(args.restore_from)
    elif model is None:
        raise ValueError("ICAETrainer needs a `model`: an ICAEForCausalLM, a causal LM or a path to one.")
    elif isinstance(model, (str, os.PathLike)):
        if AutoConfig.from_pretrained(model).model_type == ICAEConfig.model_type:
            model = ICAEForCausalLM.from_pretrained(model)
        else:
            model = _wrap_base_model(model, tokenizer, overrides)
    elif not isinstance(model, ICAEForCausalLM):
        if not isinstance(model, PreTrainedModel):
            raise ValueError(f"Cannot train a {type(model).__name__}; give an ICAEForCausalLM or a causal LM.")
        model = _wrap_base_model(model, tokenizer, overrides)

    for name, value in overrides.items():
        if getattr(model.config, name) != value:
            raise ValueError(
                f"`args.{name}={value}` disagrees with the model's config ({getattr(model.config, name)}); unset "
                "it, or build the model with that value."
            )
    if args.restore_from is not None and not restore_folder:
        load_original_state_dict(model, args.restore_from)
    return model


def _wrap_base_model(lm, tokenizer, overrides: dict) -> ICAEForCausalLM:
    if tokenizer is None:
        raise ValueError(
            "Building an ICAE from a base LM adds its memory and AE/LM/FT tokens to the tokenizer; pass the "
            "tokenizer as `processing_class`."
        )
    return ICAEForCausalLM.from_base_model(lm, tokenizer=tokenizer, **overrides)


def _pad_token_id(model: ICAEForCausalLM, tokenizer) -> int:
    """A real token id to pad with (its value never matters: padding is masked and carries no loss)."""
    candidates = (
        getattr(tokenizer, "pad_token_id", None),
        getattr(model.config.text_config, "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    )
    return next((c for c in candidates if c is not None), 0)


__all__ = ["ICAETrainer", "ICAETrainingArguments"]
