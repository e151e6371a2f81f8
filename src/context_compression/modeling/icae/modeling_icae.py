"""In-context Autoencoder (ICAE): a LoRA encoder writes memory slots that the frozen backbone reads.

One copy of the backbone serves both roles: the encoder is the backbone with its LoRA adapter on, the decoder is
the same backbone with the adapter off. The memory-token and AE/LM/FT embeddings are this model's own parameters.
"""

import contextlib
import functools
import math
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput, logging

from .configuration_icae import ICAEConfig


logger = logging.get_logger(__name__)

ADAPTER_NAME = "default"
CPU_SEGMENT_BATCH_SIZE = 4


@dataclass
class CompressedContext(ModelOutput):
    """
    Memory slots for a batch of contexts, right-aligned by `memory_attention_mask`.

    Args:
        memory_embeds (`torch.FloatTensor` of shape `(batch_size, num_slots, hidden_size)`):
            The memory slots; rows with fewer slots are padded with zeros at the end.
        memory_attention_mask (`torch.LongTensor` of shape `(batch_size, num_slots)`):
            1 for a real slot, 0 for padding.
        context_lengths (`torch.LongTensor` of shape `(batch_size,)`):
            Context tokens compressed into each row.
    """

    memory_embeds: torch.FloatTensor | None = None
    memory_attention_mask: torch.LongTensor | None = None
    context_lengths: torch.LongTensor | None = None

    @property
    def num_slots(self) -> torch.LongTensor:
        """Real memory slots per row."""
        return self.memory_attention_mask.sum(dim=1)

    @property
    def compression_ratio(self) -> torch.FloatTensor:
        """Context tokens per memory slot, per row."""
        return self.context_lengths.float() / self.num_slots.float()

    def save(self, path: str) -> None:
        """Write the three tensors to a safetensors file, so a compressed context can be cached and reused."""
        save_file(
            {key: value.detach().contiguous().cpu() for key, value in self.items()},
            str(path),
            metadata={"format": "pt", "kind": "icae-compressed-context"},
        )

    @classmethod
    def load(cls, path: str, device: str | torch.device | None = None) -> "CompressedContext":
        """Read a file written by [`CompressedContext.save`]."""
        tensors = load_file(str(path), device=str(device) if device is not None else "cpu")
        missing = {"memory_embeds", "memory_attention_mask", "context_lengths"} - set(tensors)
        if missing:
            raise ValueError(f"{path} is not a saved CompressedContext: it lacks {sorted(missing)}.")
        return cls(**tensors)

    def to(self, *args, **kwargs) -> "CompressedContext":
        """Move the memory (and, for a device, the masks) like `torch.Tensor.to`."""
        return CompressedContext(
            memory_embeds=self.memory_embeds.to(*args, **kwargs),
            memory_attention_mask=self.memory_attention_mask.to(self.memory_embeds.to(*args, **kwargs).device),
            context_lengths=self.context_lengths.to(self.memory_embeds.to(*args, **kwargs).device),
        )

    @classmethod
    def concatenate(cls, *contexts: "CompressedContext") -> "CompressedContext":
        """
        Join several compressed contexts row by row, in order: the multi-span concatenation of ICAE v2, and the
        accumulated memory of a turn-by-turn trajectory. All must have the same batch size.
        """
        if not contexts:
            raise ValueError("concatenate() needs at least one CompressedContext.")
        batch_sizes = {c.memory_embeds.shape[0] for c in contexts}
        if len(batch_sizes) != 1:
            raise ValueError(f"Cannot concatenate compressed contexts with different batch sizes {sorted(batch_sizes)}.")
        rows = []
        for row in range(batch_sizes.pop()):
            rows.append(
                torch.cat([c.memory_embeds[row][c.memory_attention_mask[row].bool()] for c in contexts], dim=0)
            )
        memory_embeds, memory_attention_mask = _right_pad(rows)
        return cls(
            memory_embeds=memory_embeds,
            memory_attention_mask=memory_attention_mask,
            context_lengths=sum(c.context_lengths for c in contexts),
        )

    def select(self, rows) -> "CompressedContext":
        """Keep some rows (an index, slice or list), dropping slot padding no remaining row needs."""
        if isinstance(rows, int):
            rows = [rows]
        mask = self.memory_attention_mask[rows]
        width = int(mask.sum(dim=1).max())
        return CompressedContext(
            memory_embeds=self.memory_embeds[rows][:, :width],
            memory_attention_mask=mask[:, :width],
            context_lengths=self.context_lengths[rows],
        )


@dataclass
class ICAECausalLMOutputWithPast(CausalLMOutputWithPast):
    """
    [`CausalLMOutputWithPast`] plus the compressed context the decoder read, when `forward` compressed one.
    """

    compressed: CompressedContext | None = None


def _right_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.LongTensor]:
    """Stack (n_i, d) tensors into (B, max n_i, d) with zeros after each row's end, plus the (B, max n_i) mask."""
    width = max(row.shape[0] for row in rows)
    padded = rows[0].new_zeros(len(rows), width, rows[0].shape[-1])
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=rows[0].device)
    for i, row in enumerate(rows):
        padded[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = 1
    return padded, mask


def num_segments(context_length: int, segment_capacity: int) -> int:
    """Segments a context of `context_length` tokens splits into: ceil(n / (memory size * compression rate))."""
    return math.ceil(context_length / segment_capacity)


def segment_bounds(context_length: int, segment_capacity: int) -> list[tuple[int, int]]:
    """
    (start, end) of each segment, as in ICAE v2: all segments `ceil(n / num_segments)` long but the last.

        n = 10, capacity = 4  ->  3 segments of length 4:  [0, 4) [4, 8) [8, 10)
    """
    count = num_segments(context_length, segment_capacity)
    length = math.ceil(context_length / count)
    return [(start, min(start + length, context_length)) for start in range(0, length * count, length)]


def memory_position_ids(segment_length: int, num_memory_tokens: int, device=None) -> torch.LongTensor:
    """
    Position identifiers (arXiv 2409.14364): segment tokens sit at 1..t and memory slot j at the j-th of
    `num_memory_tokens` points spread linearly over [1, t], truncated to an integer.

        t = 8, 4 slots  ->  tokens 1 2 3 4 5 6 7 8 | memory 1 3 5 8
    """
    return torch.linspace(1, segment_length, num_memory_tokens, device=device).long()


class ICAEPreTrainedModel(PreTrainedModel):
    config_class = ICAEConfig
    base_model_prefix = "language_model"
    input_modalities = ("text",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as usual; a model registered for remote code also maps `AutoModel` to itself in `auto_map`."""
        if self._auto_class is not None:
            module = type(self).__module__.rsplit(".", 1)[-1]
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), "AutoModel": f"{module}.{type(self).__name__}"}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module):
        if isinstance(module, ICAEForCausalLM):
            std = getattr(self.config.text_config, "initializer_range", 0.02)
            module.memory_token_embed.weight.data.normal_(mean=0.0, std=std)


class ICAEForCausalLM(ICAEPreTrainedModel, GenerationMixin):
    r"""
    ICAE over any decoder-only backbone that `AutoModelForCausalLM` builds (Llama, Mistral, Qwen2, Qwen3, ...).

    - [`~ICAEForCausalLM.compress`] turns contexts into memory slots ([`CompressedContext`]).
    - [`~ICAEForCausalLM.generate`] decodes from a prompt whose `memory_token_id` placeholders receive the slots.
    - [`~ICAEForCausalLM.forward`] with `context_input_ids` and `labels` is one training step's loss.

    `memory_token_embed` holds `num_memory_tokens` memory-token rows followed by the AE, LM and FT rows, the layout
    of the original checkpoints.
    """

    def __init__(self, config: ICAEConfig, language_model: PreTrainedModel | None = None):
        super().__init__(config)
        self.language_model = language_model or AutoModelForCausalLM.from_config(config.text_config)
        inject_adapter_in_model(self._lora_config(), self.language_model, adapter_name=ADAPTER_NAME)
        for layer in self._adapter_layers:
            # peft's initialisation (B = 0: the encoder starts as the backbone) must survive `post_init`.
            for name, param in layer.named_parameters():
                if "lora_" in name:
                    param._is_hf_initialized = True
        self.memory_token_embed = nn.Embedding(
            config.num_memory_tokens + 3, config.text_config.hidden_size, dtype=self.language_model.dtype
        )
        self.post_init()

    def _lora_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.config.lora_r,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora_dropout,
            target_modules=list(self.config.lora_target_modules),
            bias="none",
        )

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_base_model(cls, lm_or_path, tokenizer=None, **config_kwargs) -> "ICAEForCausalLM":
        """
        Wrap a pretrained causal LM (a model or a path / Hub id) as an untrained ICAE.

        With a `tokenizer`, its memory placeholder and AE/LM/FT tokens are added to it (as special tokens) and their
        ids written into the config. Remaining keyword arguments are [`ICAEConfig`] fields.
        """
        lm = lm_or_path
        if isinstance(lm_or_path, (str, bytes)) or hasattr(lm_or_path, "__fspath__"):
            lm = AutoModelForCausalLM.from_pretrained(lm_or_path)
        if tokenizer is not None:
            config_kwargs = {**_add_special_tokens(tokenizer, config_kwargs), **config_kwargs}
        if _quant_method(lm.config) == "gguf":
            # GGUF weights are dequantized on load: the saved ICAE is a plain float model.
            del lm.config.quantization_config
            lm.hf_quantizer = None
        attn_implementation = lm.config._attn_implementation
        config = ICAEConfig(text_config=lm.config, **config_kwargs)
        config._attn_implementation = attn_implementation
        for param in lm.parameters():
            param._is_hf_initialized = True
        model = cls(config, language_model=lm)
        model.generation_config = lm.generation_config
        with torch.no_grad():
            # Start the memory embeddings at the scale of the backbone's own embeddings.
            table = lm.get_input_embeddings().weight
            model.memory_token_embed.weight.normal_(float(table.mean()), float(table.std()))
        return model

    # ------------------------------------------------------------------ backbone plumbing

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    @functools.cached_property
    def _adapter_layers(self) -> list[BaseTunerLayer]:
        return [module for module in self.language_model.modules() if isinstance(module, BaseTunerLayer)]

    @property
    def adapter_enabled(self) -> bool:
        """Whether the backbone currently runs as the encoder (LoRA on) rather than the decoder."""
        return not self._adapter_layers[0].disable_adapters

    @contextlib.contextmanager
    def adapter(self, enabled: bool):
        """
        Run the backbone as the encoder (`enabled=True`) or the decoder. Flips the LoRA layers' switch without
        touching `requires_grad`, so the caller's choice of trainable parameters survives.
        """
        previous = self.adapter_enabled
        self._set_adapter(enabled)
        try:
            yield
        finally:
            self._set_adapter(previous)

    def _set_adapter(self, enabled: bool) -> None:
        for layer in self._adapter_layers:
            layer._disable_adapters = not enabled

    def _set_gradient_checkpointing(self, enable=True, gradient_checkpointing_func=None, **kwargs):
        """
        One weight copy meets checkpointing badly: a layer is recomputed in backward under the adapter state of
        that moment, not of its forward. Recompute under the forward's state instead; this needs non-reentrant
        checkpointing, whose `context_fn` runs the recomputation inside a context of our choosing.
        """
        if gradient_checkpointing_func is not None:
            gradient_checkpointing_func = functools.partial(
                _checkpoint_replaying_adapter_state, gradient_checkpointing_func, self
            )
        super()._set_gradient_checkpointing(enable, gradient_checkpointing_func=gradient_checkpointing_func, **kwargs)

    # ------------------------------------------------------------------ embedding

    def embed_tokens(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """
        Embed ids that may include the AE/LM/FT markers (taken from `memory_token_embed`) and memory placeholders
        (zero here; [`~ICAEForCausalLM.embed_prompt`] fills them).
        """
        vocab_size = self.get_input_embeddings().num_embeddings
        specials = torch.tensor(
            [self.config.ae_token_id, self.config.lm_token_id, self.config.ft_token_id], device=input_ids.device
        )
        special_rows = self.config.num_memory_tokens + torch.arange(3, device=input_ids.device)
        is_marker = input_ids.unsqueeze(-1) == specials
        is_placeholder = input_ids == self.config.memory_token_id
        is_special = is_marker.any(-1) | is_placeholder
        unknown = (input_ids >= vocab_size) & ~is_special
        if unknown.any():
            raise ValueError(
                f"Token id {int(input_ids[unknown][0])} is outside the backbone's vocabulary ({vocab_size}) and is "
                f"none of this ICAE's special tokens {self.config.special_tokens()}. Was the prompt tokenized with "
                "the tokenizer saved alongside this model?"
            )
        embeds = self.get_input_embeddings()(input_ids.masked_fill(is_special, 0))
        marker_rows = (is_marker.long() * special_rows).sum(-1)
        marker_embeds = self.memory_token_embed(marker_rows).to(embeds.dtype)
        embeds = torch.where(is_marker.any(-1, keepdim=True), marker_embeds, embeds)
        return embeds.masked_fill(is_placeholder.unsqueeze(-1), 0.0)

    def embed_prompt(self, input_ids: torch.LongTensor, compressed: CompressedContext | None) -> torch.Tensor:
        """Embed a decoder prompt and splice each row's memory slots, in order, into its placeholders."""
        embeds = self.embed_tokens(input_ids)
        placeholders = input_ids == self.config.memory_token_id
        found = placeholders.sum(dim=1)
        if compressed is None:
            if found.any():
                raise ValueError(
                    f"The prompt has {found.tolist()} memory placeholders per row but no compressed context was "
                    "given; pass `compressed=model.compress(...)` or `context_input_ids=...`."
                )
            return embeds
        expected = compressed.num_slots.to(found.device)
        if found.shape != expected.shape or not torch.equal(found, expected):
            raise ValueError(
                f"The prompt has {found.tolist()} memory placeholders per row but the compressed context has "
                f"{expected.tolist()} memory slots; build the prompt with `model.prepare_prompt(tokenizer, ..., "
                "compressed=compressed)` so each row holds one placeholder per slot."
            )
        memory = compressed.memory_embeds[compressed.memory_attention_mask.bool()].to(embeds.dtype)
        return embeds.masked_scatter(placeholders.unsqueeze(-1), memory)

    # ------------------------------------------------------------------ compression

    def compress(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        segment_batch_size: int | None = None,
    ) -> CompressedContext:
        """
        Compress each row's context into `num_segments * num_memory_tokens` memory slots.

        All segments of all rows go through the encoder as right-padded batches of at most `segment_batch_size`
        segments, longest first (default: all at once on an accelerator; 4 on CPU, where one wide batch measured
        slower than several narrow ones, see benchmarks/bench_compression.py); a row's slots are the final (normed) hidden states at its
        memory tokens, segment after segment. Padding (left or right, marked by `attention_mask`) never reaches the
        encoder, so each row compresses as it would alone.
        """
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has {tuple(input_ids.shape)}; "
                "pass the mask the tokenizer returned with these ids."
            )
        contexts = [ids[mask.bool()] for ids, mask in zip(input_ids, attention_mask)]
        self._check_contexts(contexts)
        segments, counts = [], []
        for context in contexts:
            bounds = segment_bounds(len(context), self.config.segment_capacity)
            segments.extend(context[start:end] for start, end in bounds)
            counts.append(len(bounds))
        if segment_batch_size is None:
            segment_batch_size = len(segments) if input_ids.device.type != "cpu" else CPU_SEGMENT_BATCH_SIZE
        # Longest first, so each encoder batch pads only to its own widest segment.
        order = sorted(range(len(segments)), key=lambda i: -len(segments[i]))
        chunks = [order[i : i + segment_batch_size] for i in range(0, len(order), segment_batch_size)]
        encoded = torch.cat([self._encode_segments([segments[i] for i in chunk]) for chunk in chunks])
        memory = encoded[torch.tensor(order, device=encoded.device).argsort()]
        per_row = [slots.flatten(0, 1) for slots in memory.split(counts)]
        memory_embeds, memory_attention_mask = _right_pad(per_row)
        return CompressedContext(
            memory_embeds=memory_embeds,
            memory_attention_mask=memory_attention_mask,
            context_lengths=torch.tensor([len(c) for c in contexts], device=input_ids.device),
        )

    def compress_turns(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None,
        context_turns: torch.LongTensor,
    ) -> CompressedContext | None:
        """
        Accumulated memory of turn-by-turn trajectories: `input_ids` holds every compressed turn of the batch as a
        row, example after example, and `context_turns[b]` counts example `b`'s rows. All turns go through the
        encoder as one batch; each example's memory is its turns' memories, concatenated in order. None when no
        example has a compressed turn.
        """
        if int(context_turns.sum()) == 0:
            return None
        turns = self.compress(input_ids, attention_mask)
        first_row = torch.cumsum(context_turns, 0) - context_turns
        by_position = []
        for position in range(int(context_turns.max())):
            present = context_turns > position
            chosen = turns.select(torch.where(present, first_row + position, 0).tolist())
            # Examples with fewer turns contribute an empty memory at this position.
            by_position.append(
                CompressedContext(
                    memory_embeds=chosen.memory_embeds,
                    memory_attention_mask=chosen.memory_attention_mask * present.unsqueeze(1),
                    context_lengths=chosen.context_lengths * present,
                )
            )
        return CompressedContext.concatenate(*by_position)

    def _check_contexts(self, contexts: list[torch.Tensor]) -> None:
        for row, context in enumerate(contexts):
            if len(context) == 0:
                raise ValueError(
                    f"Context {row} is empty (no token with attention_mask == 1); give every row at least one token."
                )
            if self.config.max_context_length is not None and len(context) > self.config.max_context_length:
                raise ValueError(
                    f"Context {row} has {len(context)} tokens, over max_context_length="
                    f"{self.config.max_context_length}. Truncate it (tokenizer(..., truncation=True, max_length="
                    f"{self.config.max_context_length})) or raise `config.max_context_length`."
                )

    def _encode_segments(self, segments: list[torch.LongTensor]) -> torch.Tensor:
        """
        Run the encoder over `[segment tokens, memory tokens, padding]` rows and return (S, m, d) memory states.

            row 0:  t t t t t M M M -
            row 1:  t t t M M M - - -      (t = token, M = memory token, - = padding)
        """
        num_memory = self.config.num_memory_tokens
        device = segments[0].device
        lengths = torch.tensor([len(s) for s in segments], device=device)
        width = int(lengths.max()) + num_memory
        token_ids = torch.nn.utils.rnn.pad_sequence(list(segments), batch_first=True)
        token_embeds = self.embed_tokens(token_ids)
        memory_tokens = self.memory_token_embed.weight[:num_memory].to(token_embeds.dtype)
        stacked = torch.cat([token_embeds, memory_tokens.expand(len(segments), -1, -1)], dim=1)

        position = torch.arange(width, device=device).unsqueeze(0)
        start = lengths.unsqueeze(1)
        is_token = position < start
        is_memory = (position >= start) & (position < start + num_memory)
        # Where each output position reads from in `stacked`: tokens, then memory, then (unused) token padding.
        source = torch.where(is_token, position, torch.where(is_memory, token_ids.shape[1] + position - start, position - num_memory))
        inputs_embeds = stacked.gather(1, source.unsqueeze(-1).expand(-1, -1, stacked.shape[-1]))
        attention_mask = (position < start + num_memory).long()

        if self.config.use_position_identifiers:
            memory_positions = torch.stack([memory_position_ids(int(n), num_memory, device) for n in lengths])
            slot = (position - start).clamp(0, num_memory - 1)
            position_ids = torch.where(is_memory, memory_positions.gather(1, slot), position + 1)
        else:
            position_ids = position.expand(len(segments), -1)
            if bool((lengths == lengths[0]).all()):
                # No padding: no mask, so attention takes its faster purely causal path. (With position identifiers
                # the mask must stay: without one, transformers reads non-increasing positions as packed sequences.)
                attention_mask = None

        with self.adapter(True):
            hidden = self.language_model.base_model(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
        memory_index = start + torch.arange(num_memory, device=device)
        return hidden.gather(1, memory_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))

    # ------------------------------------------------------------------ decoding

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        context_input_ids: torch.LongTensor | None = None,
        context_attention_mask: torch.LongTensor | None = None,
        compressed: CompressedContext | None = None,
        context_turns: torch.LongTensor | None = None,
        **kwargs,
    ) -> ICAECausalLMOutputWithPast:
        r"""
        Decode `input_ids` (with memory placeholders) from a compressed context, given as `compressed` or as raw
        `context_input_ids` to compress first (with gradients, for training).

        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Targets aligned with `input_ids` (the model shifts them); -100 marks positions without loss, such as
            the prompt and the placeholders.
        context_turns (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            For trajectories: how many rows of `context_input_ids` are each example's turns (see
            [`~ICAEForCausalLM.compress_turns`]). Compressing inside `forward` keeps FSDP/DDP wrapping intact.
        """
        if context_input_ids is not None:
            if compressed is not None:
                raise ValueError("Pass either `compressed` or `context_input_ids`, not both.")
            if context_turns is not None:
                compressed = self.compress_turns(context_input_ids, context_attention_mask, context_turns)
            else:
                compressed = self.compress(context_input_ids, context_attention_mask)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_prompt(input_ids, compressed)
        if labels is not None and self.training:
            # Training needs only the loss: skip the (tokens x vocab) logits, the largest buffers of a step.
            num_items_in_batch = kwargs.pop("num_items_in_batch", None)
            with self.adapter(False):
                hidden = self.language_model.base_model(
                    inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs
                ).last_hidden_state
            loss = causal_lm_loss(hidden, labels, self.get_output_embeddings(), num_items_in_batch)
            return ICAECausalLMOutputWithPast(loss=loss, compressed=compressed if context_input_ids is not None else None)
        with self.adapter(False):
            outputs = self.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        loss = None
        if labels is not None:
            loss = self.loss_function(outputs.logits, labels, vocab_size=outputs.logits.shape[-1], **kwargs)
        return ICAECausalLMOutputWithPast(
            loss=loss,
            logits=outputs.logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            compressed=compressed if context_input_ids is not None else None,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        compressed: CompressedContext | None = None,
        context_input_ids: torch.LongTensor | None = None,
        context_attention_mask: torch.LongTensor | None = None,
        **kwargs,
    ):
        """
        [`GenerationMixin.generate`] from a prompt with memory placeholders (left-pad batches) and a compressed
        context, given as `compressed` or as `context_input_ids` to compress first. Greedy, sampling, beam search,
        stopping criteria and streamers all work. Returns only the new tokens, since the prompt was passed as
        embeddings.
        """
        if context_input_ids is not None:
            if compressed is not None:
                raise ValueError("Pass either `compressed` or `context_input_ids`, not both.")
            compressed = self.compress(context_input_ids, context_attention_mask)
        if input_ids is None:
            raise ValueError("generate() needs `input_ids`: the prompt, with memory placeholders for the context.")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs_embeds = self.embed_prompt(input_ids, compressed)
        return super().generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    # ------------------------------------------------------------------ prompts

    def memory_placeholders(self, num_slots: int) -> list[int]:
        """`num_slots` memory placeholder ids, to put in a prompt where the memory should be read."""
        return [self.config.memory_token_id] * int(num_slots)

    def prepare_prompt(self, tokenizer, prompt=None, compressed: CompressedContext | None = None, mode: str = "ft", **kwargs):
        """
        Build left-padded decoder prompts (`input_ids`, `attention_mask`) for each row of `compressed`:

        - `"ae"`: memory + AE token; the model then reconstructs the context.
        - `"lm"`: memory (+ LM token when `lm_token=True`); the model continues the context.
        - `"ft"`: the tokenizer's chat template around a user turn of memory + FT token + `prompt` (a string,
          or one string per row), with the generation prompt appended, as instruction fine-tuning sees it.
        """
        if compressed is None:
            raise ValueError("prepare_prompt() needs the `compressed` context whose slots the prompt will hold.")
        slots = compressed.num_slots.tolist()
        prompts = [prompt] * len(slots) if prompt is None or isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(slots):
            raise ValueError(f"Got {len(prompts)} prompts for {len(slots)} compressed contexts; give one per row.")
        rows = [build_prompt_ids(self.config, tokenizer, n, text, mode, **kwargs) for n, text in zip(slots, prompts)]
        width = max(len(row) for row in rows)
        pad_id = getattr(tokenizer, "pad_token_id", None)
        if pad_id is None:
            pad_id = self.config.text_config.pad_token_id or 0
        device = compressed.memory_embeds.device
        input_ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows], device=device)
        attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=device)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def check_tokenizer(self, tokenizer) -> None:
        """Raise if the tokenizer's ids for this model's special tokens differ from the config's."""
        check_tokenizer(self.config, tokenizer)


def check_tokenizer(config: ICAEConfig, tokenizer) -> None:
    """Raise if the tokenizer's ids for the config's special tokens differ from the config's."""
    for token, expected in config.special_tokens().items():
        found = tokenizer.convert_tokens_to_ids(token)
        if expected is None or found != expected:
            raise ValueError(
                f"The tokenizer maps {token!r} to {found} but the config expects {expected}. Load the tokenizer "
                "saved with this model, or set the config's token ids from this tokenizer."
            )


def build_prompt_ids(
    config: ICAEConfig, tokenizer, num_slots: int, prompt: str | None = None, mode: str = "ft", lm_token: bool = False
) -> list[int]:
    """
    One decoder prompt's ids with `num_slots` memory placeholders (see [`ICAEForCausalLM.prepare_prompt`]). Needs
    only the config, so dataset map functions can build training prompts without holding the model.
    """
    memory = [config.memory_token_id] * int(num_slots)
    if mode == "ae":
        return memory + [config.ae_token_id]
    if mode == "lm":
        return memory + ([config.lm_token_id] if lm_token else [])
    if mode != "ft":
        raise ValueError(f"Unknown prompt mode {mode!r}; use 'ae' (reconstruct), 'lm' (continue) or 'ft' (answer).")
    if prompt is None:
        raise ValueError("mode='ft' needs a `prompt` (the question or instruction about the context).")
    check_tokenizer(config, tokenizer)
    prefix, suffix = _chat_turn_around(tokenizer)

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    return encode(prefix) + memory + [config.ft_token_id] + encode(prompt) + encode(suffix)


def causal_lm_loss(
    hidden: torch.Tensor, labels: torch.LongTensor, lm_head: nn.Module, num_items_in_batch=None, chunk_size: int = 512
) -> torch.Tensor:
    """
    Shifted cross-entropy (as transformers' causal-LM loss) over the labelled positions only, applying `lm_head` a
    chunk at a time under checkpointing, so no more than `chunk_size x vocab` logits exist at once, in forward or
    backward. Averages over `num_items_in_batch` when given (gradient accumulation), else over the labelled tokens.
    """
    targets = labels[:, 1:].to(hidden.device)
    keep = targets != -100
    states, targets = hidden[:, :-1][keep], targets[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), chunk_size):
        chunk = slice(start, start + chunk_size)
        total = total + torch.utils.checkpoint.checkpoint(
            _summed_cross_entropy, lm_head, states[chunk], targets[chunk], use_reentrant=False
        )
    count = num_items_in_batch if num_items_in_batch is not None else len(targets)
    return total / count


def _summed_cross_entropy(lm_head: nn.Module, states: torch.Tensor, targets: torch.LongTensor) -> torch.Tensor:
    return nn.functional.cross_entropy(lm_head(states).float(), targets, reduction="sum")


def _checkpoint_replaying_adapter_state(checkpoint, model: ICAEForCausalLM, function, *args, **kwargs):
    """Checkpoint `function`, recomputing it in backward with the adapter switched as it was in forward."""
    enabled = model.adapter_enabled
    kwargs.pop("use_reentrant", None)
    return checkpoint(
        function,
        *args,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), model.adapter(enabled)),
        **kwargs,
    )


def _chat_turn_around(tokenizer) -> tuple[str, str]:
    """
    The text a chat template puts before and after a user turn (with the generation prompt).

    The turn's parts are tokenized one by one, as the original ICAE built `[INST] memory FT prompt [/INST]`: the
    prompt on its own, and the prefix without its trailing spaces, so Mistral's template gives the original ids.
    Without a template: just the BOS token.
    """
    if not getattr(tokenizer, "chat_template", None):
        return (tokenizer.bos_token or "", "")
    marker = "\uE000icae-user-turn\uE000"
    text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False, add_generation_prompt=True)
    prefix, suffix = text.split(marker)
    return prefix.rstrip(" "), suffix


def _quant_method(config) -> str | None:
    quantization = getattr(config, "quantization_config", None)
    method = quantization.get("quant_method") if isinstance(quantization, dict) else getattr(quantization, "quant_method", None)
    return None if method is None else str(getattr(method, "value", method))


def _add_special_tokens(tokenizer, config_kwargs: dict) -> dict:
    """Add the placeholder and mode tokens to `tokenizer`; return their ids as config fields."""
    names = {
        "memory_token": config_kwargs.get("memory_token", "<MEM>"),
        "ae_token": config_kwargs.get("ae_token", "<AE>"),
        "lm_token": config_kwargs.get("lm_token", "<LM>"),
        "ft_token": config_kwargs.get("ft_token", "<FT>"),
    }
    tokenizer.add_tokens(list(names.values()), special_tokens=True)
    return {f"{name}_id": tokenizer.convert_tokens_to_ids(token) for name, token in names.items()}


__all__ = [
    "CompressedContext",
    "ICAECausalLMOutputWithPast",
    "ICAEForCausalLM",
    "ICAEPreTrainedModel",
    "build_prompt_ids",
    "check_tokenizer",
]
