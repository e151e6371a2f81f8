"""
Convert an original ICAE v2 checkpoint (getao/icae, e.g. `mistral_7b_pretrained_icae.safetensors`) to an
[`ICAEForCausalLM`] folder.

The original files are state dicts of the research code's `ICAE` module, which it loads with `strict=False` over a
freshly built model: encoder LoRA weights (`icae.base_model.model.<module>.lora_{A,B}.default.weight`) and
`memory_token_embed.weight` (memory rows, then AE, LM, FT). Full trainer dumps also hold the base weights
(`icae...base_layer.weight`, resized `embed_tokens` / `lm_head`) and the frozen decoder copy (`decoder.*`); those
come from the base model here and are skipped. The config keeps the original token-id layout (PAD at `V`, memory
tokens from `V + 1`, then AE, LM, FT, with `V` the base vocabulary size), so prompts built as the original built them
run unchanged.

    python -m context_compression.modeling.icae.convert_icae_original_to_hf \
        --checkpoint mistral_7b_ft_icae.safetensors --base_model mistralai/Mistral-7B-Instruct-v0.2 --output_dir icae-ft

This file ships beside the modeling code, so it imports only its neighbours, torch, transformers, peft and
safetensors.
"""

import argparse
import json
import os
import re

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

from .configuration_icae import ICAEConfig
from .modeling_icae import ADAPTER_NAME, ICAEForCausalLM


logger = logging.get_logger(__name__)

MEMORY_KEY = "memory_token_embed.weight"
ENCODER_PREFIX = "icae.base_model.model."
# The padding token the original appends to the vocabulary, before its memory tokens.
PAD_TOKEN = "<ICAE_PAD>"
_LORA_KEY = re.compile(r"^icae\.base_model\.model\.(?P<module>.+)\.(?P<kind>lora_[AB])\.(?P<adapter>[^.]+)\.weight$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


# ---------------------------------------------------------------------------------------------- reading


def _read_checkpoint(path_or_state_dict) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]]]:
    """
    Return (tensors of the LoRA and memory keys, shapes of every key). From a safetensors file only the needed
    tensors are read, so a full trainer dump with two copies of the base costs no memory.
    """
    if isinstance(path_or_state_dict, dict):
        tensors = {key: value for key, value in path_or_state_dict.items() if _is_needed(key)}
        return tensors, {key: tuple(value.shape) for key, value in path_or_state_dict.items()}
    path = _checkpoint_file(os.fspath(path_or_state_dict))
    if path.endswith(".safetensors"):
        with safe_open(path, framework="pt") as file:
            keys = list(file.keys())
            shapes = {key: tuple(file.get_slice(key).get_shape()) for key in keys}
            return {key: file.get_tensor(key) for key in keys if _is_needed(key)}, shapes
    state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return _read_checkpoint(state_dict)


def _checkpoint_file(path: str) -> str:
    """Resolve a checkpoint path: a file, or a folder the original's `Trainer` wrote (no `config.json`)."""
    if not os.path.isdir(path):
        if not os.path.isfile(path):
            raise ValueError(f"Checkpoint {path!r} does not exist; pass the original `.safetensors` file.")
        return path
    config_file = os.path.join(path, "config.json")
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as file:
            model_type = json.load(file).get("model_type")
        if model_type == ICAEConfig.model_type:
            raise ValueError(
                f"{path!r} is already an ICAEForCausalLM folder; load it with "
                "`AutoModelForCausalLM.from_pretrained(path)` instead of converting it."
            )
        raise ValueError(
            f"{path!r} holds a model of type {model_type!r}, not an original ICAE checkpoint. Pass the original "
            "ICAE `.safetensors` file (for example mistral_7b_pretrained_icae.safetensors)."
        )
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise ValueError(f"{path!r} holds no model.safetensors or pytorch_model.bin; pass the checkpoint file itself.")


def _is_needed(key: str) -> bool:
    return key == MEMORY_KEY or "lora_" in key


def _split_keys(keys) -> tuple[dict[str, tuple[str, str, str]], list[str]]:
    """
    Sort checkpoint keys into LoRA weights (key -> (module, "lora_A"/"lora_B", adapter)) and skipped base/decoder
    weights. Anything else, or a trained tensor this model cannot hold, raises: nothing trainable is dropped silently.
    """
    lora, skipped = {}, []
    for key in keys:
        if key == MEMORY_KEY:
            continue
        match = _LORA_KEY.match(key)
        trained = "lora_" in key or "modules_to_save" in key
        if match:
            lora[key] = (match["module"], match["kind"], match["adapter"])
        elif key.startswith(("icae.", "decoder.")) and not trained:
            skipped.append(key)
        elif key.startswith("icae."):
            raise ValueError(
                f"Checkpoint key {key!r} is a trained weight this converter cannot place: only LoRA A/B matrices on "
                "linear layers of the encoder (`icae.base_model.model.<module>.lora_A.<adapter>.weight`) are "
                "supported, as the original ICAE trains them (no LoRA on embeddings, DoRA, LoRA bias or "
                "modules_to_save)."
            )
        else:
            raise ValueError(f"Checkpoint key {key!r} is not part of an original ICAE checkpoint. {_format_hint(keys)}")
    return lora, skipped


def _format_hint(keys) -> str:
    """Say what a checkpoint that is not an original ICAE one looks like."""
    keys = list(keys)
    if any(key.startswith("language_model.") for key in keys):
        return (
            "It looks like a model saved by context-compression (keys `language_model.*`); load its folder with "
            "`AutoModelForCausalLM.from_pretrained` instead of converting it."
        )
    if any("embed_summary" in key for key in keys):
        return (
            "It looks like an AutoCompressor checkpoint (`embed_summary`), another method; this converter only reads "
            "ICAE checkpoints."
        )
    return (
        "An original ICAE checkpoint holds `memory_token_embed.weight` and `icae.base_model.model.*.lora_A/B` keys; "
        f"this one starts with {keys[:3]}."
    )


def _layout(tensors: dict[str, torch.Tensor], shapes: dict[str, tuple]) -> tuple[dict, dict, list[str]]:
    """
    Check that a checkpoint is an original ICAE one; return its layout (memory size, hidden size, LoRA rank and
    target modules, read off the tensors), its LoRA keys and the base/decoder keys to skip.
    """
    lora, skipped = _split_keys(shapes)
    if MEMORY_KEY not in tensors:
        raise ValueError(
            f"The checkpoint has no {MEMORY_KEY!r}, so it is not an ICAE checkpoint. {_format_hint(shapes)}"
        )
    if not lora:
        raise ValueError("The checkpoint has no LoRA weights (`icae.base_model.model.*.lora_A.default.weight`).")
    adapters = sorted({adapter for _, _, adapter in lora.values()})
    if len(adapters) != 1:
        raise ValueError(f"The checkpoint holds LoRA adapters {adapters}; an ICAE encoder has exactly one.")
    rows, hidden_size = tensors[MEMORY_KEY].shape
    if rows < 4:
        raise ValueError(f"{MEMORY_KEY} has {rows} rows; an ICAE one has num_memory_tokens + 3 (AE, LM, FT).")
    ranks = {tuple(tensors[key].shape)[0] for key, (_, kind, _) in lora.items() if kind == "lora_A"}
    if len(ranks) != 1:
        raise ValueError(f"The checkpoint's LoRA matrices have ranks {sorted(ranks)}; one shared rank is supported.")
    layout = {
        "num_memory_tokens": rows - 3,
        "hidden_size": hidden_size,
        "lora_r": ranks.pop(),
        "lora_target_modules": sorted({module.rsplit(".", 1)[-1] for module, _, _ in lora.values()}),
    }
    return layout, lora, skipped


# ---------------------------------------------------------------------------------------------- loading


def load_original_state_dict(model: ICAEForCausalLM, path_or_state_dict) -> None:
    """
    Load an original ICAE state dict (a file or a dict) into `model`: its encoder LoRA and `memory_token_embed`.

    Base and decoder weights in the checkpoint are skipped (they come from `model`'s backbone). Every LoRA tensor must
    land on a LoRA parameter of the same shape, and every LoRA parameter of `model` must be covered, so a checkpoint
    trained on another base, rank or target set raises `ValueError` instead of loading partly.
    """
    _load(model, *_read_checkpoint(path_or_state_dict))


def _load(model: ICAEForCausalLM, tensors: dict[str, torch.Tensor], shapes: dict[str, tuple]) -> None:
    layout, lora, skipped = _layout(tensors, shapes)
    params = dict(model.named_parameters())
    memory = tensors[MEMORY_KEY]
    _check_shape(
        MEMORY_KEY,
        tuple(model.memory_token_embed.weight.shape),
        tuple(memory.shape),
        f"this checkpoint has {layout['num_memory_tokens']} memory tokens of hidden size {layout['hidden_size']}; "
        f"the model has {model.config.num_memory_tokens} of hidden size {model.config.text_config.hidden_size}. "
        "Pass the matching --base_model and num_memory_tokens",
    )
    _check_vocabulary(shapes, model, layout["num_memory_tokens"])

    targets = {}
    for key, (module, kind, _) in lora.items():
        name = f"language_model.{module}.{kind}.{ADAPTER_NAME}.weight"
        if name not in params:
            raise _unknown_module_error(key, module, model.config.lora_target_modules)
        expected, found = tuple(params[name].shape), tuple(tensors[key].shape)
        features = "input" if kind == "lora_A" else "output"
        _check_shape(
            key,
            expected,
            found,
            f"this checkpoint's {module} has rank {layout['lora_r']} and {found[1 if kind == 'lora_A' else 0]} "
            f"{features} features (hidden size {layout['hidden_size']}); pass the matching --base_model and lora_r",
        )
        targets[name] = tensors[key]
    uncovered = sorted(name for name in params if ".lora_" in name and name not in targets)
    if uncovered:
        raise ValueError(
            f"The checkpoint has no weights for {len(uncovered)} LoRA parameters of the model, e.g. {uncovered[0]!r}. "
            f"It was trained on LoRA targets {layout['lora_target_modules']}; build the model with "
            "`lora_target_modules` matching them (or convert with convert_icae_original_to_hf)."
        )

    with torch.no_grad():
        model.memory_token_embed.weight.copy_(memory)
        for name, tensor in targets.items():
            params[name].copy_(tensor)
    if skipped:
        logger.info(
            f"Skipped {len(skipped)} base-model and decoder weights of the checkpoint (e.g. {skipped[0]!r}); the model "
            "uses its own backbone's."
        )


def _unknown_module_error(key: str, module: str, targets) -> ValueError:
    return ValueError(
        f"Checkpoint key {key!r} has no counterpart in the model: the backbone has no LoRA layer {module!r} (LoRA "
        f"targets: {list(targets)}). The checkpoint was trained on another architecture or depth, or with other "
        "target modules; pass the matching --base_model."
    )


def _check_shape(key: str, expected: tuple, found: tuple, cause: str) -> None:
    if expected != found:
        raise ValueError(f"Checkpoint tensor {key!r} has shape {found}, the model expects {expected}: {cause}.")


def _check_vocabulary(shapes: dict[str, tuple], model: ICAEForCausalLM, num_memory_tokens: int) -> None:
    """A full dump holds the original's resized embeddings, V + 1 + mem + 3 rows: check V against the backbone."""
    vocab_size = model.get_input_embeddings().num_embeddings
    for key in (f"{ENCODER_PREFIX}model.embed_tokens.weight", f"{ENCODER_PREFIX}lm_head.weight"):
        if key in shapes and shapes[key][0] != vocab_size + num_memory_tokens + 4:
            raise ValueError(
                f"Checkpoint tensor {key!r} has {shapes[key][0]} rows, so the checkpoint was trained on a base with a "
                f"vocabulary of {shapes[key][0] - num_memory_tokens - 4} tokens; this backbone has {vocab_size}. Pass "
                "the matching --base_model."
            )


# ---------------------------------------------------------------------------------------------- converting


def original_special_token_ids(vocab_size: int, num_memory_tokens: int) -> dict[str, int]:
    """
    The original's token ids as [`ICAEConfig`] fields: PAD is `V`, memory tokens `V + 1 ... V + mem` (prompts repeat
    the first as the placeholder), then AE, LM and FT.
    """
    first_special = vocab_size + 1 + num_memory_tokens
    return {
        "memory_token_id": vocab_size + 1,
        "ae_token_id": first_special,
        "lm_token_id": first_special + 1,
        "ft_token_id": first_special + 2,
    }


def extend_tokenizer(tokenizer, config: ICAEConfig, vocab_size: int) -> None:
    """
    Add the original's extra tokens to a base tokenizer of exactly `vocab_size` tokens, in place, so its ids match
    the config: `<ICAE_PAD>`, the placeholder, `<MEM_1>` ... `<MEM_{mem-1}>` (fillers for the original's other
    memory ids), then the AE, LM and FT tokens. A tokenizer that already matches is left as it is.
    """
    expected = config.special_tokens()
    if all(tokenizer.convert_tokens_to_ids(token) == token_id for token, token_id in expected.items()):
        return
    if len(tokenizer) != vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the base model's vocabulary has {vocab_size}; the original "
            "ICAE ids start right after the vocabulary, so they cannot be added to this tokenizer. Pass the base "
            "model's own tokenizer (--tokenizer)."
        )
    fillers = [f"{config.memory_token[:-1]}_{i}{config.memory_token[-1]}" for i in range(1, config.num_memory_tokens)]
    tokens = [PAD_TOKEN, config.memory_token, *fillers, config.ae_token, config.lm_token, config.ft_token]
    tokenizer.add_tokens(tokens, special_tokens=True)
    for offset, token in enumerate(tokens):
        if tokenizer.convert_tokens_to_ids(token) != vocab_size + offset:
            raise ValueError(
                f"The tokenizer already knows {token!r} (id {tokenizer.convert_tokens_to_ids(token)}), so it cannot "
                f"take the original ICAE id {vocab_size + offset}. Pass the base model's unmodified tokenizer."
            )


def convert_icae_original_to_hf(
    checkpoint_path,
    base_model,
    output_dir=None,
    *,
    lora_alpha: int = 32,
    mean_compression_rate: int = 4,
    lora_dropout: float = 0.05,
    tokenizer=None,
    dtype=None,
) -> ICAEForCausalLM:
    """
    Build an [`ICAEForCausalLM`] from an original ICAE v2 checkpoint and the base it was trained on.

    Args:
        checkpoint_path: the original `.safetensors` file (or a state dict, or the original trainer's output folder).
        base_model: the base LM, as a path / Hub id or a model (which then receives the LoRA layers in place).
        output_dir: where to save the converted model, with the tokenizer when there is one.
        lora_alpha, lora_dropout: not stored in the checkpoint; the released ones used 32 and 0.05.
        mean_compression_rate: context tokens per memory slot, which sets the segment length (the original's 4).
        tokenizer: the base tokenizer (object or path), extended in place with the original's extra tokens. Defaults
            to the one in `base_model`'s folder, if any.
        dtype: dtype to load the base in (e.g. `torch.bfloat16` or `"auto"`).

    Memory size, LoRA rank and target modules are read off the checkpoint.
    """
    tensors, shapes = _read_checkpoint(checkpoint_path)
    layout, lora, _ = _layout(tensors, shapes)

    if isinstance(base_model, (str, os.PathLike)):
        if tokenizer is None and _has_tokenizer(base_model):
            tokenizer = base_model
        base_model = AutoModelForCausalLM.from_pretrained(base_model, **({"dtype": dtype} if dtype is not None else {}))
    elif dtype is not None and dtype != "auto":
        base_model = base_model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)

    hidden_size = base_model.config.get_text_config().hidden_size
    if layout["hidden_size"] != hidden_size:
        raise ValueError(
            f"This checkpoint was trained on a base with hidden size {layout['hidden_size']} ({MEMORY_KEY} has shape "
            f"{tuple(tensors[MEMORY_KEY].shape)}), but the base model has hidden size {hidden_size}; pass the matching "
            "--base_model."
        )
    modules = dict(base_model.named_modules())
    for key, (module, _, _) in lora.items():
        if not isinstance(modules.get(module), torch.nn.Linear):
            raise _unknown_module_error(key, module, layout["lora_target_modules"])
    vocab_size = base_model.get_input_embeddings().num_embeddings
    model = ICAEForCausalLM.from_base_model(
        base_model,
        num_memory_tokens=layout["num_memory_tokens"],
        mean_compression_rate=mean_compression_rate,
        lora_r=layout["lora_r"],
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        lora_target_modules=layout["lora_target_modules"],
        **original_special_token_ids(vocab_size, layout["num_memory_tokens"]),
    )
    _load(model, tensors, shapes)
    model.eval()

    if tokenizer is not None:
        extend_tokenizer(tokenizer, model.config, vocab_size)
        model.check_tokenizer(tokenizer)
    else:
        logger.warning(
            "No tokenizer given or found beside the base model; the converted model is saved without one. Its token "
            f"ids follow the original layout ({model.config.special_tokens()}): extend the base tokenizer with "
            "`extend_tokenizer` before building prompts from text."
        )
    if output_dir is not None:
        model.save_pretrained(output_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(output_dir)
        logger.info(f"Saved the converted ICAE to {output_dir}.")
    return model


def _has_tokenizer(path) -> bool:
    """Whether `path` is a Hub id (which has a tokenizer) or a folder holding tokenizer files."""
    if not os.path.isdir(path):
        return True
    return any(os.path.isfile(os.path.join(path, name)) for name in _TOKENIZER_FILES)


# ---------------------------------------------------------------------------------------------- command line


def main(argv=None) -> str:
    """Command-line entry point (also `context-compression convert`); returns the output folder."""
    parser = argparse.ArgumentParser(description="Convert an original ICAE v2 checkpoint to an ICAEForCausalLM folder.")
    parser.add_argument("--checkpoint", required=True, help="The original .safetensors file (or trainer output dir).")
    parser.add_argument("--base_model", required=True, help="Path or Hub id of the base LM it was trained on.")
    parser.add_argument("--output_dir", required=True, help="Folder to write the converted model and tokenizer to.")
    parser.add_argument("--tokenizer", default=None, help="Base tokenizer path or Hub id; defaults to the base's.")
    parser.add_argument("--lora_alpha", type=int, default=32, help="LoRA alpha the checkpoint was trained with.")
    parser.add_argument("--lora_dropout", type=float, default=0.05, help="LoRA dropout, for further training.")
    parser.add_argument("--mean_compression_rate", type=int, default=4, help="Context tokens per memory slot.")
    parser.add_argument(
        "--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"], help="dtype to load the base in."
    )
    args = parser.parse_args(argv)
    convert_icae_original_to_hf(
        args.checkpoint,
        args.base_model,
        args.output_dir,
        lora_alpha=args.lora_alpha,
        mean_compression_rate=args.mean_compression_rate,
        lora_dropout=args.lora_dropout,
        tokenizer=args.tokenizer,
        dtype=args.dtype,
    )
    return args.output_dir


__all__ = [
    "convert_icae_original_to_hf",
    "extend_tokenizer",
    "load_original_state_dict",
    "main",
    "original_special_token_ids",
]


if __name__ == "__main__":
    import logging as std_logging

    std_logging.basicConfig(level=std_logging.INFO, format="%(message)s")
    main()
