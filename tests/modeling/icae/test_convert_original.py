"""
Converting an original ICAE v2 checkpoint: the converted model must compress, score and generate exactly as the
original code does with the same weights.

The "original" here is rebuilt in the test from the research code's recipe (resized base, `get_peft_model`,
`memory_token_embed`), so its state-dict names are the released files' names, and a per-segment loop written from
the original's semantics serves as the reference.
"""

import ast
import copy
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig

from context_compression import ICAEForCausalLM
from context_compression.modeling.icae import convert_icae_original_to_hf as convert_module
from context_compression.modeling.icae.convert_icae_original_to_hf import (
    convert_icae_original_to_hf,
    load_original_state_dict,
)


MEM, RATE, RANK = 4, 2, 8
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class OriginalICAE(nn.Module):
    """The original `ICAE` module's parameter layout: `icae` (resized base + peft LoRA) and `memory_token_embed`."""

    def __init__(self, base_dir, target_modules=None):
        super().__init__()
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        self.vocab_size = base.get_input_embeddings().num_embeddings
        base.resize_token_embeddings(self.vocab_size + 1 + MEM + 3)
        lora = LoraConfig(
            r=RANK, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", target_modules=target_modules
        )
        self.icae = get_peft_model(base, lora)
        self.memory_token_embed = nn.Embedding(MEM + 3, base.config.hidden_size)
        with torch.no_grad():
            for name, param in self.icae.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.1)
        self.eval()

    def trained_state_dict(self):
        """What the released files hold: LoRA weights and memory embeddings only."""
        return {
            key: value.contiguous()
            for key, value in self.state_dict().items()
            if "lora_" in key or key.startswith("memory_token_embed")
        }

    # ---- reference computation, following the original's `_compress` and inference loops

    def embed(self, ids):
        ids = torch.tensor([ids])
        embeds = self.icae.get_base_model().model.embed_tokens(ids).clone()
        special = ids > self.vocab_size
        embeds[special] = self.memory_token_embed(ids[special] - self.vocab_size - 1)
        return embeds

    def compress(self, ids):
        n = len(ids)
        length = math.ceil(n / math.ceil(n / (MEM * RATE)))
        memory_ids = list(range(self.vocab_size + 1, self.vocab_size + 1 + MEM))
        slots = []
        for start in range(0, n, length):
            segment = ids[start : start + length] + memory_ids
            hidden = self.icae(inputs_embeds=self.embed(segment), output_hidden_states=True).hidden_states[-1]
            slots.append(hidden[0, -MEM:])
        return torch.cat(slots)

    def decoder_embeds(self, prompt_ids, slots):
        embeds = self.embed(prompt_ids)
        ids = torch.tensor([prompt_ids])
        embeds[(ids > self.vocab_size) & (ids <= self.vocab_size + MEM)] = slots
        return embeds

    def logits(self, prompt_ids, slots):
        with self.icae.disable_adapter():
            logits = self.icae(inputs_embeds=self.decoder_embeds(prompt_ids, slots)).logits
        return logits[0, :, : self.vocab_size]

    def greedy(self, prompt_ids, slots, max_new_tokens, eos_token_id):
        inputs, past, tokens = self.decoder_embeds(prompt_ids, slots), None, []
        with self.icae.disable_adapter():
            for _ in range(max_new_tokens):
                out = self.icae(inputs_embeds=inputs, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = int(out.logits[0, -1, : self.vocab_size].argmax())
                if token == eos_token_id:
                    break
                tokens.append(token)
                inputs = self.icae.get_base_model().model.embed_tokens(torch.tensor([[token]]))
        return tokens


def build_original(config, tokenizer, root: Path, target_modules=None, name="icae.safetensors"):
    """Save a random base (with its tokenizer) and an original-format checkpoint for it under `root`."""
    base_dir = root / "base"
    AutoModelForCausalLM.from_config(config).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    original = OriginalICAE(base_dir, target_modules)
    path = root / name
    save_file(original.trained_state_dict(), str(path))
    return original, base_dir, path


@pytest.fixture
def original(tiny_mistral_config, tiny_tokenizer, tmp_path):
    return build_original(tiny_mistral_config, tiny_tokenizer, tmp_path)


@pytest.fixture
def context(tiny_tokenizer):
    """21 tokens: three segments of 7 for a capacity of MEM * RATE = 8."""
    return torch.randint(10, len(tiny_tokenizer), (21,)).tolist()


def test_checkpoint_uses_the_released_key_names(original):
    keys = set(original[0].trained_state_dict())
    assert "icae.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight" in keys
    assert "icae.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight" in keys
    assert "memory_token_embed.weight" in keys
    assert len(keys) == 2 * 2 * 2 + 1  # layers x (q, v) x (A, B) + memory


@torch.no_grad()
def test_converted_model_matches_the_original(original, context, tiny_tokenizer, tmp_path):
    reference, base_dir, path = original
    V = reference.vocab_size
    model = convert_icae_original_to_hf(path, base_dir, tmp_path / "out", mean_compression_rate=RATE, lora_dropout=0.0)
    assert (model.config.num_memory_tokens, model.config.lora_r) == (MEM, RANK)
    assert model.config.lora_target_modules == ["q_proj", "v_proj"]
    assert [model.config.memory_token_id, model.config.ae_token_id, model.config.ft_token_id] == [
        V + 1, V + 1 + MEM, V + 3 + MEM
    ]

    slots = reference.compress(context)
    compressed = model.compress(torch.tensor([context]))
    assert compressed.memory_embeds.shape == (1, 3 * MEM, 32)
    torch.testing.assert_close(compressed.memory_embeds[0], slots, atol=1e-5, rtol=0)
    # The LoRA weights matter: the base alone would write other memory.
    with reference.icae.disable_adapter():
        assert not torch.allclose(reference.compress(context), slots, atol=1e-2)

    ae_prompt = [V + 1] * (3 * MEM) + [V + 1 + MEM]  # the original's placeholders (mem[0]) and AE token
    ours = model(input_ids=torch.tensor([ae_prompt]), compressed=compressed).logits[0]
    torch.testing.assert_close(ours, reference.logits(ae_prompt, slots), atol=1e-5, rtol=0)

    eos = tiny_tokenizer.eos_token_id
    expected = reference.greedy(ae_prompt, slots, max_new_tokens=12, eos_token_id=eos)
    generated = model.generate(
        input_ids=torch.tensor([ae_prompt]), compressed=compressed, do_sample=False, max_new_tokens=12
    )[0].tolist()
    assert expected and generated[: len(expected)] == expected
    assert generated[len(expected) :] in ([], [eos])

    # Instruction layout: [bos, [INST]-like ids] + placeholders + FT + prompt + [[/INST]-like ids].
    ft_prompt = [1, 40, 41, 42] + [V + 1] * (3 * MEM) + [V + 3 + MEM] + [100, 101, 102] + [43, 44, 45, 46]
    ours = model(input_ids=torch.tensor([ft_prompt]), compressed=compressed).logits[0]
    torch.testing.assert_close(ours, reference.logits(ft_prompt, slots), atol=1e-5, rtol=0)


@torch.no_grad()
def test_tokenizer_gets_the_original_ids(original, context, tmp_path):
    reference, base_dir, path = original
    V = reference.vocab_size
    model = convert_icae_original_to_hf(path, base_dir, tmp_path / "out", mean_compression_rate=RATE)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    model.check_tokenizer(tokenizer)
    ids = tokenizer.convert_tokens_to_ids(["<ICAE_PAD>", "<MEM>", "<MEM_1>", "<MEM_3>", "<AE>", "<LM>", "<FT>"])
    assert ids == [V, V + 1, V + 2, V + 4, V + 1 + MEM, V + 2 + MEM, V + 3 + MEM]

    # A prompt built from text through the tokenizer feeds the decoder the original's ids.
    compressed = model.compress(torch.tensor([context]))
    prompt = model.prepare_prompt(tokenizer, "Summarise it.", compressed=compressed, mode="ft")["input_ids"]
    assert prompt[0].tolist().count(V + 1) == 3 * MEM and V + 3 + MEM in prompt[0].tolist()
    ours = model(input_ids=prompt, compressed=compressed).logits[0]
    expected = reference.logits(prompt[0].tolist(), reference.compress(context))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    ae = model.prepare_prompt(tokenizer, compressed=compressed, mode="ae")["input_ids"][0].tolist()
    assert ae == [V + 1] * (3 * MEM) + [V + 1 + MEM]

    # An already extended tokenizer is accepted as it is.
    convert_icae_original_to_hf(path, base_dir, tokenizer=tokenizer, mean_compression_rate=RATE)
    assert len(tokenizer) == V + 1 + MEM + 3


@torch.no_grad()
def test_saved_folder_reloads_to_the_same_model(original, context, tmp_path):
    _, base_dir, path = original
    converted = convert_icae_original_to_hf(path, base_dir, tmp_path / "out", mean_compression_rate=RATE)
    reloaded = ICAEForCausalLM.from_pretrained(tmp_path / "out").eval()
    fields = lambda config: {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}  # noqa: E731
    assert fields(reloaded.config) == fields(converted.config)
    ids = torch.tensor([context])
    memory = reloaded.compress(ids)
    torch.testing.assert_close(memory.memory_embeds, converted.compress(ids).memory_embeds, atol=0, rtol=0)
    prompt = reloaded.prepare_prompt(AutoTokenizer.from_pretrained(tmp_path / "out"), compressed=memory, mode="ae")
    torch.testing.assert_close(
        reloaded(**prompt, compressed=memory).logits,
        converted(**prompt, compressed=converted.compress(ids)).logits,
        atol=0,
        rtol=0,
    )


@torch.no_grad()
def test_more_target_modules(tiny_mistral_config, tiny_tokenizer, context, tmp_path):
    reference, base_dir, path = build_original(tiny_mistral_config, tiny_tokenizer, tmp_path, ALL_LINEAR)
    model = convert_icae_original_to_hf(path, base_dir, mean_compression_rate=RATE)
    assert model.config.lora_target_modules == sorted(ALL_LINEAR)
    torch.testing.assert_close(
        model.compress(torch.tensor([context])).memory_embeds[0], reference.compress(context), atol=1e-5, rtol=0
    )


@torch.no_grad()
def test_full_trainer_dump_skips_base_and_decoder_weights(original, context, tmp_path, caplog):
    reference, base_dir, _ = original
    dump = {key: value.clone().contiguous() for key, value in reference.state_dict().items()}
    decoder = AutoModelForCausalLM.from_pretrained(base_dir)
    dump.update({f"decoder.{key}": value.clone().contiguous() for key, value in decoder.state_dict().items()})
    assert "icae.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight" in dump
    save_file(dump, str(tmp_path / "dump.safetensors"))

    logger = convert_module.logger.name
    with caplog.at_level(logging.INFO, logger=logger):
        model = convert_icae_original_to_hf(tmp_path / "dump.safetensors", base_dir, mean_compression_rate=RATE)
    assert any("Skipped" in record.message for record in caplog.records if record.name == logger)
    torch.testing.assert_close(
        model.compress(torch.tensor([context])).memory_embeds[0], reference.compress(context), atol=1e-5, rtol=0
    )

    # The dump's resized embeddings reveal the base vocabulary: a base with another vocabulary is refused.
    other = MistralConfig(**{**decoder.config.to_dict(), "vocab_size": reference.vocab_size + 8})
    with pytest.raises(ValueError, match=f"vocabulary of {reference.vocab_size} tokens"):
        convert_icae_original_to_hf(tmp_path / "dump.safetensors", AutoModelForCausalLM.from_config(other))


@torch.no_grad()
def test_load_original_state_dict_into_an_existing_model(original, context, tiny_tokenizer):
    reference, base_dir, path = original
    model = ICAEForCausalLM.from_base_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        tokenizer=copy.deepcopy(tiny_tokenizer),
        num_memory_tokens=MEM,
        mean_compression_rate=RATE,
        lora_r=RANK,
        lora_dropout=0.0,
    ).eval()
    load_original_state_dict(model, path)
    torch.testing.assert_close(
        model.compress(torch.tensor([context])).memory_embeds[0], reference.compress(context), atol=1e-5, rtol=0
    )
    model.memory_token_embed.weight.data.zero_()
    load_original_state_dict(model, reference.trained_state_dict())  # a state dict works as well as a file
    torch.testing.assert_close(model.memory_token_embed.weight, reference.memory_token_embed.weight, atol=0, rtol=0)

    wrong_rank = ICAEForCausalLM.from_base_model(
        AutoModelForCausalLM.from_pretrained(base_dir), num_memory_tokens=MEM, lora_r=RANK // 2
    )
    with pytest.raises(ValueError, match=r"q_proj\.lora_A\.default\.weight'.*\(8, 32\).*\(4, 32\)"):
        load_original_state_dict(wrong_rank, path)
    more_targets = ICAEForCausalLM.from_base_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        num_memory_tokens=MEM,
        lora_r=RANK,
        lora_target_modules=ALL_LINEAR,
    )
    with pytest.raises(ValueError, match="no weights for 20 LoRA parameters"):
        load_original_state_dict(more_targets, path)


def test_base_of_another_size_is_refused(original, tiny_mistral_config, tmp_path):
    _, _, path = original
    wider = MistralConfig(**{**tiny_mistral_config.to_dict(), "hidden_size": 48})
    with pytest.raises(ValueError, match="hidden size 32.*hidden size 48; pass the matching --base_model"):
        convert_icae_original_to_hf(path, AutoModelForCausalLM.from_config(wider))
    # Same hidden size, more key/value heads: v_proj's LoRA B no longer fits.
    more_heads = MistralConfig(**{**tiny_mistral_config.to_dict(), "num_key_value_heads": 4})
    with pytest.raises(ValueError, match=r"v_proj\.lora_B\.default\.weight'.*\(16, 8\).*\(32, 8\).*--base_model"):
        convert_icae_original_to_hf(path, AutoModelForCausalLM.from_config(more_heads))


def test_checkpoints_of_other_kinds_are_refused(original, tiny_mistral_config, tmp_path):
    reference, base_dir, _ = original
    base = AutoModelForCausalLM.from_config(tiny_mistral_config)
    lora_only = {k: v for k, v in reference.trained_state_dict().items() if k != "memory_token_embed.weight"}
    with pytest.raises(ValueError, match="no 'memory_token_embed.weight'"):
        convert_icae_original_to_hf(lora_only, base)

    unknown = reference.trained_state_dict()
    unknown["icae.base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.default.weight"] = torch.zeros(RANK, 32)
    with pytest.raises(ValueError, match=r"'icae\.base_model\.model\.model\.layers\.0\.self_attn\.qkv_proj\.lora_A"):
        convert_icae_original_to_hf(unknown, base)
    deeper = reference.trained_state_dict()
    deeper["icae.base_model.model.model.layers.5.self_attn.q_proj.lora_A.default.weight"] = torch.zeros(RANK, 32)
    with pytest.raises(ValueError, match=r"no LoRA layer 'model\.layers\.5\.self_attn\.q_proj'"):
        convert_icae_original_to_hf(deeper, base)
    embedding_lora = reference.trained_state_dict()
    embedding_lora["icae.base_model.model.model.embed_tokens.lora_embedding_A.default"] = torch.zeros(RANK, 10)
    with pytest.raises(ValueError, match="lora_embedding_A.*cannot place"):
        convert_icae_original_to_hf(embedding_lora, base)

    summary = {"model.embed_summary.weight": torch.zeros(2, 32), **reference.trained_state_dict()}
    with pytest.raises(ValueError, match="AutoCompressor"):
        convert_icae_original_to_hf(summary, base)

    converted = tmp_path / "converted"
    convert_icae_original_to_hf(reference.trained_state_dict(), base_dir, converted)
    with pytest.raises(ValueError, match="already an ICAEForCausalLM folder"):
        convert_icae_original_to_hf(converted, base_dir)
    with pytest.raises(ValueError, match="saved by context-compression"):
        convert_icae_original_to_hf(converted / "model.safetensors", base_dir)


def test_tokenizer_of_another_size_is_refused(original, tiny_tokenizer):
    reference, base_dir, path = original
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match=f"tokenizer has {reference.vocab_size + 1} tokens.*{reference.vocab_size}"):
        convert_icae_original_to_hf(path, base_dir, tokenizer=tokenizer)


@torch.no_grad()
def test_command_line_conversion(original, context, tmp_path):
    reference, base_dir, path = original
    out = tmp_path / "cli"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-m", "context_compression.modeling.icae.convert_icae_original_to_hf",
         "--checkpoint", str(path), "--base_model", str(base_dir), "--output_dir", str(out),
         "--mean_compression_rate", str(RATE), "--dtype", "float32"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Saved the converted ICAE" in result.stderr
    model = ICAEForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(
        model.compress(torch.tensor([context])).memory_embeds[0], reference.compress(context), atol=1e-5, rtol=0
    )


def test_converter_imports_only_what_remote_code_allows():
    tree = ast.parse(Path(convert_module.__file__).read_text())
    folder = {p.stem for p in Path(convert_module.__file__).parent.glob("*.py")}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert node.level == 1 and node.module in folder, ast.unparse(node)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                assert name.split(".")[0] in {
                    "argparse", "json", "logging", "os", "re", "torch", "transformers", "peft", "safetensors"
                }, ast.unparse(node)  # fmt: skip
