"""Save and push compression models as self-contained Hub checkpoints.

A checkpoint written here loads with plain transformers, without this library:

- `model.safetensors`, `config.json` with `auto_map`, and the method's configuration/modeling files, written by the
  model's own `save_pretrained` (this library registers its models for remote code);
- the tokenizer, with the memory and mode tokens the model expects;
- `context_compression.py`, the pipeline, and a `custom_pipelines` entry in config.json, written by transformers'
  `Pipeline.save_pretrained` for the registered `context-compression` task, so that
  `pipeline(model=path_or_repo, trust_remote_code=True)` needs no task name;
- `README.md`, a model card rendered from `model_cards/<model_type>.md`.
"""

import os
import re
import tempfile
from importlib import resources
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData

from .pipelines import ContextCompressionPipeline


# Keys of `card_metadata` the template reads; all other keys are model card metadata (YAML header) fields.
TEMPLATE_KEYS = ("model_id", "model_name", "metrics")


def save_pretrained(model, tokenizer, save_directory: str | os.PathLike, *, card_metadata: dict | None = None) -> Path:
    """
    Write `model`, `tokenizer`, the pipeline code and a model card to `save_directory`.

    Args:
        model: a compression model of this library, e.g. [`ICAEForCausalLM`].
        tokenizer: the tokenizer the model was built or trained with (checked against the model's special tokens).
        save_directory: the folder to write; created if needed.
        card_metadata (`dict`, *optional*): `model_id` (the Hub repo id the usage snippet loads; defaults to
            `save_directory`), `model_name` (the card's title), `metrics` (name -> value, shown as a table), and any
            [`huggingface_hub.ModelCardData`] field (`license`, `datasets`, `language`, `tags`, `base_model`, ...).

    Returns:
        The folder written, as a `Path`.
    """
    save_directory = Path(save_directory)
    card = render_model_card(model, {"model_id": str(save_directory), **(card_metadata or {})})
    pipe = ContextCompressionPipeline(model=model, tokenizer=tokenizer, device=model.device)
    # `Pipeline.save_pretrained` records the task in `model.config.custom_pipelines` and copies the pipeline's
    # file; undo the config change afterwards, so a later plain `model.save_pretrained` claims no pipeline file.
    had_entry = "custom_pipelines" in vars(model.config)
    previous = getattr(model.config, "custom_pipelines", None)
    try:
        pipe.save_pretrained(save_directory)
    finally:
        if had_entry:
            model.config.custom_pipelines = previous
        else:
            del model.config.custom_pipelines
    card.save(save_directory / "README.md")
    return save_directory


def push_to_hub(
    model,
    tokenizer,
    repo_id: str,
    *,
    card_metadata: dict | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload context-compression model",
    create_pr: bool = False,
    api: HfApi | None = None,
) -> CommitInfo:
    """
    Save as [`save_pretrained`] does into a temporary folder, then upload that folder to `repo_id` (created if
    missing) in one commit. The card's usage snippet loads `repo_id`.

    `api` is the Hub client to use (endpoint, token); it defaults to `HfApi(token=token)`.
    """
    api = api if api is not None else HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, tokenizer, folder, card_metadata={"model_id": repo_id, **(card_metadata or {})})
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
        )


def render_model_card(model, card_metadata: dict | None = None) -> ModelCard:
    """Fill the model type's card template with the model's configuration and `card_metadata`."""
    card_metadata = dict(card_metadata or {})
    model_type = model.config.model_type
    templates = resources.files("context_compression") / "model_cards"
    template = templates / f"{model_type}.md"
    if not template.is_file():
        available = sorted(path.name[: -len(".md")] for path in templates.iterdir() if path.name.endswith(".md"))
        raise ValueError(
            f"No model card template for model type {model_type!r}; add model_cards/{model_type}.md "
            f"(templates exist for {available})."
        )
    template_values = {key: card_metadata.pop(key) for key in TEMPLATE_KEYS if key in card_metadata}
    base_model_name = _base_model_name(model)
    if "base_model" not in card_metadata and _is_hub_id(base_model_name):
        card_metadata["base_model"] = base_model_name
    card_data = ModelCardData(
        library_name="transformers",
        tags=sorted({"context-compression", model_type, "custom_code", *card_metadata.pop("tags", [])}),
        **card_metadata,
    )
    config = model.config
    values = {key: value for key, value in config.to_dict().items() if key != "text_config"}
    values.update(
        model_name=f"{model_type.upper()} over {Path(card_metadata.get('base_model') or base_model_name).name}",
        base_model_name=card_metadata.get("base_model") or base_model_name,
        backbone_type=config.text_config.model_type,
        segment_capacity=config.segment_capacity,
        special_tokens=", ".join(f"`{token}`" for token in config.special_tokens()),
        metrics=None,
    )
    values.update(template_values)
    return ModelCard.from_template(card_data, template_str=template.read_text(encoding="utf-8"), **values)


def _base_model_name(model) -> str:
    """The backbone's Hub id or path, as it was loaded; `"a randomly initialised model"` when built from a config."""
    name = getattr(model.config.text_config, "_name_or_path", "") or model.language_model.config._name_or_path
    return name or "a randomly initialised model"


def _is_hub_id(name: str) -> bool:
    """Whether `name` reads as a Hub repo id (`owner/name`) rather than a local folder."""
    return re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not os.path.exists(name)


__all__ = ["push_to_hub", "render_model_card", "save_pretrained"]
