"""Configuration of the In-context Autoencoder (ICAE, Ge et al., ICLR 2024)."""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


class ICAEConfig(PreTrainedConfig):
    r"""
    Configuration of [`ICAEForCausalLM`]: a backbone LM (`text_config`) whose LoRA-adapted copy writes memory
    slots and whose plain copy (the same weights, adapter disabled) reads them.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            The backbone's config (Llama, Mistral, Qwen2, Qwen3, ...). Defaults to a Llama config.
        num_memory_tokens (`int`, *optional*, defaults to 128):
            Memory slots written per segment.
        mean_compression_rate (`int`, *optional*, defaults to 4):
            Context tokens per memory slot. A context of `n` tokens splits into
            `ceil(n / (num_memory_tokens * mean_compression_rate))` segments.
        use_position_identifiers (`bool`, *optional*, defaults to `False`):
            Give each memory slot a position spread linearly over its segment's positions (arXiv 2409.14364)
            instead of the positions that follow the segment.
        lora_r (`int`, *optional*, defaults to 128), lora_alpha (`int`, *optional*, defaults to 32),
        lora_dropout (`float`, *optional*, defaults to 0.05), lora_target_modules (`list[str]`, *optional*):
            The encoder's LoRA adapter. Target modules default to `["q_proj", "v_proj"]` as in the original.
        memory_token_id, ae_token_id, lm_token_id, ft_token_id (`int`, *optional*):
            Tokenizer ids of the memory placeholder and of the autoencoding / language-modelling / fine-tuning
            markers. They may lie outside the backbone's vocabulary: the model embeds them itself.
        memory_token, ae_token, lm_token, ft_token (`str`):
            The same tokens as strings, so a tokenizer can be checked against this config.
        max_context_length (`int`, *optional*):
            Longest context `compress` accepts; defaults to the backbone's `max_position_embeddings`.

    Example:
    ```python
    >>> from transformers import LlamaConfig
    >>> from context_compression import ICAEConfig
    >>> config = ICAEConfig(text_config=LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    ...     intermediate_size=128, vocab_size=100), num_memory_tokens=8, memory_token_id=100, ae_token_id=101,
    ...     lm_token_id=102, ft_token_id=103)
    >>> config.segment_capacity
    32
    ```
    """

    model_type = "icae"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    num_memory_tokens: int = 128
    mean_compression_rate: int = 4
    use_position_identifiers: bool = False
    lora_r: int = 128
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None
    memory_token_id: int | None = None
    ae_token_id: int | None = None
    lm_token_id: int | None = None
    ft_token_id: int | None = None
    memory_token: str = "<MEM>"
    ae_token: str = "<AE>"
    lm_token: str = "<LM>"
    ft_token: str = "<FT>"
    max_context_length: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.lora_target_modules is None:
            self.lora_target_modules = ["q_proj", "v_proj"]
        if self.max_context_length is None:
            self.max_context_length = getattr(self.text_config, "max_position_embeddings", None)
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        self._validate()

    def _validate(self):
        for name in ("num_memory_tokens", "mean_compression_rate", "lora_r"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        ids = {name: getattr(self, name) for name in self.special_token_names}
        given = [i for i in ids.values() if i is not None]
        if len(set(given)) != len(given):
            raise ValueError(
                f"The special token ids must be distinct, got {ids}. Add each token to the tokenizer once "
                "(`ICAEForCausalLM.from_base_model(..., tokenizer=tok)` does this) and copy its id here."
            )
        capacity_limit = getattr(self.text_config, "max_position_embeddings", None)
        if capacity_limit is not None and self.num_memory_tokens >= capacity_limit:
            raise ValueError(
                f"`num_memory_tokens={self.num_memory_tokens}` does not fit the backbone's "
                f"max_position_embeddings={capacity_limit}; use fewer memory tokens."
            )

    special_token_names = ("memory_token_id", "ae_token_id", "lm_token_id", "ft_token_id")

    @property
    def segment_capacity(self) -> int:
        """Most context tokens one segment holds: `num_memory_tokens * mean_compression_rate`."""
        return self.num_memory_tokens * self.mean_compression_rate

    def special_tokens(self) -> dict[str, int | None]:
        """Token string -> id for the placeholder and mode tokens."""
        return {
            self.memory_token: self.memory_token_id,
            self.ae_token: self.ae_token_id,
            self.lm_token: self.lm_token_id,
            self.ft_token: self.ft_token_id,
        }


__all__ = ["ICAEConfig"]
