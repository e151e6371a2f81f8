"""ICAEForCausalLM: compression, decoding and generation checked against independent computations."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, TextIteratorStreamer
from transformers.modeling_utils import PreTrainedModel

from context_compression import CompressedContext, ICAEConfig, ICAEForCausalLM
from context_compression.modeling.icae.modeling_icae import memory_position_ids, segment_bounds


def pad(rows, side="right", value=0):
    """(ids, mask) tensors from id lists, padded on `side`."""
    width = max(len(r) for r in rows)
    ids, mask = [], []
    for r in rows:
        fill = [value] * (width - len(r))
        ids.append(r + fill if side == "right" else fill + r)
        mask.append([1] * len(r) + [0] * len(fill) if side == "right" else [0] * len(fill) + [1] * len(r))
    return torch.tensor(ids), torch.tensor(mask)


def reference_memory(model, context, position_identifiers=False, adapter=True):
    """The original's per-segment loop: [segment, memory tokens] through the LoRA encoder, last hidden states."""
    m = model.config.num_memory_tokens
    slots = []
    for start, end in segment_bounds(len(context), model.config.segment_capacity):
        ids = torch.tensor([context[start:end]])
        embeds = torch.cat([model.get_input_embeddings()(ids), model.memory_token_embed.weight[:m].unsqueeze(0)], 1)
        kwargs = {}
        if position_identifiers:
            t = end - start
            kwargs["position_ids"] = torch.cat([torch.arange(1, t + 1), memory_position_ids(t, m)]).unsqueeze(0)
            kwargs["attention_mask"] = torch.ones_like(kwargs["position_ids"])  # plain causal attention
        with model.adapter(adapter):
            hidden = model.language_model(inputs_embeds=embeds, output_hidden_states=True, **kwargs).hidden_states[-1]
        slots.append(hidden[0, -m:])
    return torch.cat(slots)


def ae_prompt(model, num_slots):
    return torch.tensor([model.memory_placeholders(num_slots) + [model.config.ae_token_id]])


# ----------------------------------------------------------------------------- segmenting


@pytest.mark.parametrize(
    "length, capacity, bounds",
    [
        (10, 4, [(0, 4), (4, 8), (8, 10)]),
        (9, 4, [(0, 3), (3, 6), (6, 9)]),
        (8, 8, [(0, 8)]),
        (17, 8, [(0, 6), (6, 12), (12, 17)]),
        (1, 512, [(0, 1)]),
    ],
)
def test_segment_bounds_follow_icae_v2(length, capacity, bounds):
    assert segment_bounds(length, capacity) == bounds
    assert len(bounds) == math.ceil(length / capacity)


def test_memory_position_ids_spread_over_segment():
    assert memory_position_ids(8, 4).tolist() == [1, 3, 5, 8]
    assert memory_position_ids(3, 4).tolist() == [1, 1, 2, 3]


# ----------------------------------------------------------------------------- compression


def test_compress_matches_per_segment_reference(icae, contexts):
    model, _ = icae
    for context in contexts:
        compressed = model.compress(torch.tensor([context]))
        expected = reference_memory(model, context)
        assert compressed.memory_embeds.shape == (1, expected.shape[0], 32)
        assert compressed.num_slots.item() == math.ceil(len(context) / 8) * 4
        assert compressed.context_lengths.item() == len(context)
        torch.testing.assert_close(compressed.memory_embeds[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_rows_one_at_a_time(icae, contexts, side):
    model, _ = icae
    ids, mask = pad(contexts, side=side, value=7)
    batch = model.compress(ids, mask)
    for size in (1, 2, 100):
        torch.testing.assert_close(model.compress(ids, mask, segment_batch_size=size).memory_embeds, batch.memory_embeds)
    assert batch.num_slots.tolist() == [4, 8, 12]
    for row, context in enumerate(contexts):
        alone = model.compress(torch.tensor([context]))
        n = alone.num_slots.item()
        torch.testing.assert_close(batch.memory_embeds[row, :n], alone.memory_embeds[0], atol=1e-5, rtol=1e-5)
        assert batch.memory_embeds[row, n:].abs().sum() == 0


def test_position_identifiers_match_reference(make_icae, tiny_llama_config, contexts):
    model, _ = make_icae(tiny_llama_config, use_position_identifiers=True)
    ids, mask = pad(contexts)
    batch = model.compress(ids, mask)
    for row, context in enumerate(contexts):
        expected = reference_memory(model, context, position_identifiers=True)
        torch.testing.assert_close(batch.memory_embeds[row, : len(expected)], expected, atol=1e-5, rtol=1e-5)
    plain = reference_memory(model, contexts[2])
    assert not torch.allclose(batch.memory_embeds[2, :12], plain, atol=1e-3)
    # Unpadded rows too (where the encoder could drop the mask): memory slots must still see their segment.
    alone = model.compress(torch.tensor([contexts[2]]))
    torch.testing.assert_close(alone.memory_embeds[0], reference_memory(model, contexts[2], position_identifiers=True))


def test_encoder_uses_lora_and_decoder_does_not(icae, contexts):
    model, _ = icae
    context = torch.tensor([contexts[1]])
    compressed = model.compress(context)
    without_lora = reference_memory(model, contexts[1], adapter=False)
    assert not torch.allclose(compressed.memory_embeds[0], without_lora, atol=1e-3)

    # The decoder is the backbone with LoRA removed: compare with a LoRA-free copy of the weights.
    plain = AutoModelForCausalLM.from_config(model.config.text_config).eval()
    state = {k.replace("base_layer.", ""): v for k, v in model.language_model.state_dict().items() if "lora_" not in k}
    plain.load_state_dict(state)
    prompt = ae_prompt(model, compressed.num_slots.item())
    ours = model(input_ids=prompt, compressed=compressed).logits
    reference = plain(inputs_embeds=model.embed_prompt(prompt, compressed)).logits
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert model.adapter_enabled  # the switch is restored after decoding


def test_one_copy_of_the_backbone(icae):
    model, _ = icae
    backbone = sum(p.numel() for n, p in model.language_model.named_parameters() if "lora_" not in n)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    storages = {p.data_ptr() for p in model.parameters()}
    assert len(storages) == len(list(model.parameters()))
    assert sum(p.numel() for p in model.parameters()) == backbone + lora + model.memory_token_embed.weight.numel()


def test_from_base_model_keeps_weights_and_starts_lora_at_zero(tiny_llama_config, tiny_tokenizer):
    import copy

    lm = AutoModelForCausalLM.from_config(tiny_llama_config)
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    tokenizer = copy.deepcopy(tiny_tokenizer)
    model = ICAEForCausalLM.from_base_model(lm, tokenizer=tokenizer, num_memory_tokens=4, lora_r=4)
    after = {k.replace("base_layer.", ""): v for k, v in model.language_model.state_dict().items() if "lora_" not in k}
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.abs().sum() == 0 for n, p in model.named_parameters() if "lora_B" in n)
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<MEM>", "<AE>", "<LM>", "<FT>")] == [
        model.config.memory_token_id,
        model.config.ae_token_id,
        model.config.lm_token_id,
        model.config.ft_token_id,
    ]
    model.check_tokenizer(tokenizer)


# ----------------------------------------------------------------------------- decoding and generation


def greedy_reference(model, prompt, compressed, steps):
    """Manual greedy loop over the decoder with a KV cache, as the original inference scripts decode."""
    embeds, past, out = model.embed_prompt(prompt, compressed), None, []
    with model.adapter(False):
        for _ in range(steps):
            step = model.language_model(inputs_embeds=embeds, past_key_values=past, use_cache=True)
            past = step.past_key_values
            token = step.logits[:, -1].argmax(-1)
            out.append(int(token))
            embeds = model.get_input_embeddings()(token).unsqueeze(1)
    return out


def test_greedy_generate_matches_manual_loop(icae, contexts):
    model, _ = icae
    compressed = model.compress(torch.tensor([contexts[2]]))
    prompt = ae_prompt(model, compressed.num_slots.item())
    generated = model.generate(input_ids=prompt, compressed=compressed, max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert generated[0].tolist() == greedy_reference(model, prompt, compressed, 8)


def test_generate_compresses_raw_context(icae, contexts):
    model, _ = icae
    context = torch.tensor([contexts[1]])
    prompt = ae_prompt(model, 8)
    from_ids = model.generate(input_ids=prompt, context_input_ids=context, max_new_tokens=5, do_sample=False)
    from_memory = model.generate(input_ids=prompt, compressed=model.compress(context), max_new_tokens=5, do_sample=False)
    assert torch.equal(from_ids, from_memory)


def test_cached_decoding_equals_full_forward(icae, contexts):
    model, _ = icae
    compressed = model.compress(torch.tensor([contexts[0]]))
    prompt = torch.cat([ae_prompt(model, 4), torch.tensor([[11, 12, 13]])], dim=1)
    full = model(input_ids=prompt, compressed=compressed).logits
    head = model(input_ids=prompt[:, :-3], compressed=compressed, use_cache=True)
    tail = model(input_ids=prompt[:, -3:], past_key_values=head.past_key_values, use_cache=True).logits
    torch.testing.assert_close(tail, full[:, -3:], atol=1e-5, rtol=1e-5)


def test_batched_generation_equals_rows_alone(icae, contexts):
    model, tokenizer = icae
    ids, mask = pad(contexts, side="right")
    compressed = model.compress(ids, mask)
    prompts = model.prepare_prompt(tokenizer, compressed=compressed, mode="ae")
    assert prompts["attention_mask"][0, 0] == 0  # left-padded
    batch = model.generate(**prompts, compressed=compressed, max_new_tokens=6, do_sample=False, eos_token_id=None)
    for row, context in enumerate(contexts):
        alone = model.compress(torch.tensor([context]))
        single = model.generate(
            input_ids=ae_prompt(model, alone.num_slots.item()), compressed=alone, max_new_tokens=6, do_sample=False,
            eos_token_id=None,
        )
        assert batch[row].tolist() == single[0].tolist()


def test_beam_search_sampling_and_streamer(icae, contexts):
    model, tokenizer = icae
    compressed = model.compress(torch.tensor([contexts[1]]))
    prompt = ae_prompt(model, 8)
    beams = model.generate(
        input_ids=prompt, compressed=compressed, num_beams=3, num_return_sequences=3, max_new_tokens=5,
        eos_token_id=None, output_scores=True, return_dict_in_generate=True,
    )
    assert beams.sequences.shape == (3, 5)
    assert beams.sequences_scores[0] >= beams.sequences_scores[-1]
    greedy = model.generate(input_ids=prompt, compressed=compressed, num_beams=1, max_new_tokens=5, eos_token_id=None)
    one_beam = model.generate(input_ids=prompt, compressed=compressed, num_beams=1, max_new_tokens=5, do_sample=False, eos_token_id=None)
    assert torch.equal(greedy, one_beam)

    def sample(seed):
        torch.manual_seed(seed)
        return model.generate(input_ids=prompt, compressed=compressed, do_sample=True, top_k=20, max_new_tokens=6, eos_token_id=None)

    assert torch.equal(sample(3), sample(3))

    streamer = TextIteratorStreamer(tokenizer)
    out = model.generate(input_ids=prompt, compressed=compressed, max_new_tokens=4, streamer=streamer, eos_token_id=None)
    streamed = "".join(list(streamer))
    assert streamed.strip() == tokenizer.decode(out[0]).strip()


def test_ft_prompt_uses_chat_template(icae, contexts):
    model, tokenizer = icae
    compressed = model.compress(torch.tensor([contexts[1]]))
    prompt = model.prepare_prompt(tokenizer, "Who carried the boxes?", compressed=compressed, mode="ft")
    ids = prompt["input_ids"][0].tolist()
    assert ids.count(model.config.memory_token_id) == 8
    assert ids.count(model.config.ft_token_id) == 1
    text = tokenizer.decode(ids)
    assert text.startswith("<s><|user|>\n" + "<MEM>" * 8 + "<FT>Who carried the boxes?")
    assert text.endswith("<|assistant|>\n")
    answer = model.generate(**prompt, compressed=compressed, max_new_tokens=3, do_sample=False)
    assert answer.shape == (1, 3)


# ----------------------------------------------------------------------------- reuse of compressed contexts


def test_compressed_context_round_trips_through_safetensors(icae, contexts, tmp_path):
    model, _ = icae
    ids, mask = pad(contexts)
    compressed = model.compress(ids, mask)
    compressed.save(tmp_path / "ctx.safetensors")
    loaded = CompressedContext.load(tmp_path / "ctx.safetensors")
    for key in ("memory_embeds", "memory_attention_mask", "context_lengths"):
        assert torch.equal(loaded[key], compressed[key])
    prompt = ae_prompt(model, 12)
    assert torch.equal(
        model.generate(input_ids=prompt, compressed=loaded.select(2), max_new_tokens=4, do_sample=False),
        model.generate(input_ids=prompt, compressed=compressed.select(2), max_new_tokens=4, do_sample=False),
    )


def test_concatenated_documents_and_turn_by_turn_memory(icae, contexts):
    model, _ = icae
    turns = [model.compress(torch.tensor([c])) for c in contexts]
    accumulated = turns[0]
    for turn in turns[1:]:
        accumulated = CompressedContext.concatenate(accumulated, turn)
    assert accumulated.num_slots.item() == 4 + 8 + 12
    assert accumulated.context_lengths.item() == sum(len(c) for c in contexts)
    expected = torch.cat([reference_memory(model, c) for c in contexts])
    torch.testing.assert_close(accumulated.memory_embeds[0], expected, atol=1e-5, rtol=1e-5)
    out = model.generate(input_ids=ae_prompt(model, 24), compressed=accumulated, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 3)

    # Batched: row-wise concatenation keeps each row's own slots, left-justified.
    ids, mask = pad(contexts[:2])
    batch = model.compress(ids, mask)
    joined = CompressedContext.concatenate(batch, batch)
    assert joined.num_slots.tolist() == [8, 16]
    torch.testing.assert_close(joined.memory_embeds[0, :8], torch.cat([batch.memory_embeds[0, :4]] * 2))


# ----------------------------------------------------------------------------- training mechanics


def test_forward_loss_and_gradients_reach_encoder(icae, contexts):
    model, _ = icae
    context = torch.tensor([contexts[1]])
    prompt = torch.cat([ae_prompt(model, 8), context], dim=1)
    labels = prompt.masked_fill(torch.arange(prompt.shape[1]) < 9, -100)
    evaluated = model(input_ids=prompt, labels=labels, context_input_ids=context)
    expected = torch.nn.functional.cross_entropy(evaluated.logits[0, 8:-1], context[0])
    torch.testing.assert_close(evaluated.loss, expected)

    model.train()  # training skips the full logits and computes the loss chunk by chunk: the same number
    trained = model(input_ids=prompt, labels=labels, context_input_ids=context)
    assert trained.logits is None
    torch.testing.assert_close(trained.loss, expected)
    trained.loss.backward()
    assert model.memory_token_embed.weight.grad[:4].abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_A" in n)


def test_chunked_loss_equals_full_logits_loss(icae):
    model, _ = icae
    from context_compression.modeling.icae.modeling_icae import causal_lm_loss

    hidden = torch.randn(2, 7, 32, requires_grad=True)
    labels = torch.randint(0, 500, (2, 7)).masked_fill(torch.rand(2, 7) < 0.3, -100)
    lm_head = model.get_output_embeddings()
    full = model.loss_function(lm_head(hidden), labels, vocab_size=lm_head.out_features)
    chunked = causal_lm_loss(hidden, labels, lm_head, chunk_size=3)
    torch.testing.assert_close(chunked, full)
    (grad_full,) = torch.autograd.grad(full, hidden)
    (grad_chunked,) = torch.autograd.grad(chunked, hidden)
    torch.testing.assert_close(grad_chunked, grad_full)
    torch.testing.assert_close(
        causal_lm_loss(hidden, labels, lm_head, num_items_in_batch=20),
        model.loss_function(lm_head(hidden), labels, vocab_size=lm_head.out_features, num_items_in_batch=20),
    )


def _grads(model, batch):
    model.zero_grad()
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_replays_adapter_state(icae, contexts):
    model, _ = icae
    model.train()
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name or "memory_token_embed" in name
    ids, mask = pad(contexts[1:])
    compressed = model.compress(ids, mask)
    prompts = model.prepare_prompt(None, compressed=compressed, mode="ae")
    answer = ids[:, :5]
    batch = dict(
        input_ids=torch.cat([prompts["input_ids"], answer], 1),
        attention_mask=torch.cat([prompts["attention_mask"], torch.ones_like(answer)], 1),
        labels=torch.cat([torch.full_like(prompts["input_ids"], -100), answer], 1),
        context_input_ids=ids,
        context_attention_mask=mask,
    )
    plain = _grads(model, batch)

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.language_model.model.layers)
    checkpointed = _grads(model, batch)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)

    # Without the replay, recomputation runs the decoder's layers with LoRA on: the bug this guards against.
    import functools

    from torch.utils.checkpoint import CheckpointError, checkpoint

    PreTrainedModel._set_gradient_checkpointing(
        model, True, gradient_checkpointing_func=functools.partial(checkpoint, use_reentrant=False)
    )
    with pytest.raises(CheckpointError):
        _grads(model, batch)


# ----------------------------------------------------------------------------- backbones and persistence


@pytest.mark.parametrize("backbone", ["tiny_llama_config", "tiny_mistral_config", "tiny_qwen2_config", "tiny_qwen3_config"])
def test_backbones_round_trip(backbone, request, make_icae, contexts, tmp_path):
    model, tokenizer = make_icae(request.getfixturevalue(backbone))
    ids, mask = pad(contexts, side="left")
    compressed = model.compress(ids, mask)
    prompts = model.prepare_prompt(tokenizer, compressed=compressed, mode="ae")
    generated = model.generate(**prompts, compressed=compressed, max_new_tokens=4, do_sample=False)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is ICAEForCausalLM
    assert reloaded.config.text_config.model_type == model.config.text_config.model_type
    torch.testing.assert_close(reloaded.compress(ids, mask).memory_embeds, compressed.memory_embeds)
    assert torch.equal(reloaded.generate(**prompts, compressed=compressed, max_new_tokens=4, do_sample=False), generated)


# ----------------------------------------------------------------------------- errors


def test_empty_context_is_refused(icae):
    model, _ = icae
    ids, mask = pad([[5, 6, 7], [8]])
    mask[1] = 0
    with pytest.raises(ValueError, match="Context 1 is empty"):
        model.compress(ids, mask)


def test_context_over_max_length_is_refused(icae):
    model, _ = icae
    with pytest.raises(ValueError, match="over max_context_length=512.*Truncate"):
        model.compress(torch.randint(10, 500, (1, 513)))


def test_placeholder_count_mismatch_is_refused(icae, contexts):
    model, _ = icae
    compressed = model.compress(torch.tensor([contexts[1]]))
    with pytest.raises(ValueError, match=r"\[7\] memory placeholders per row but the compressed context has \[8\]"):
        model.generate(input_ids=ae_prompt(model, 7), compressed=compressed, max_new_tokens=2)
    with pytest.raises(ValueError, match="no compressed context was given"):
        model(input_ids=ae_prompt(model, 8))


def test_unknown_token_ids_are_refused(icae):
    model, _ = icae
    with pytest.raises(ValueError, match="outside the backbone's vocabulary"):
        model(input_ids=torch.tensor([[5, 900]]))


def test_tokenizer_disagreeing_with_config_is_refused(icae, tiny_tokenizer):
    model, _ = icae
    with pytest.raises(ValueError, match="maps '<MEM>' to .* but the config expects"):
        model.check_tokenizer(tiny_tokenizer)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_memory_tokens": 0}, "num_memory_tokens"),
        ({"mean_compression_rate": -1}, "mean_compression_rate"),
        ({"memory_token_id": 5, "ae_token_id": 5}, "must be distinct"),
        ({"num_memory_tokens": 4096}, "max_position_embeddings"),
    ],
)
def test_invalid_config_values(tiny_llama_config, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ICAEConfig(text_config=tiny_llama_config, **kwargs)


def test_prompt_mode_errors(icae, contexts):
    model, tokenizer = icae
    compressed = model.compress(torch.tensor([contexts[0]]))
    with pytest.raises(ValueError, match="Unknown prompt mode 'qa'"):
        model.prepare_prompt(tokenizer, "q", compressed=compressed, mode="qa")
    with pytest.raises(ValueError, match="needs a `prompt`"):
        model.prepare_prompt(tokenizer, compressed=compressed, mode="ft")


def test_mask_of_another_shape_is_refused(icae):
    model, _ = icae
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 4\) but input_ids has \(1, 5\)"):
        model.compress(torch.ones(1, 5, dtype=torch.long), torch.ones(1, 4, dtype=torch.long))


def test_ft_prompt_reproduces_the_original_mistral_layout(icae, contexts):
    """Mistral's template gives `[BOS] [INST] memory FT prompt [/INST]` with no space token before the memory."""
    model, tokenizer = icae
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% endfor %}"
    )
    compressed = model.compress(torch.tensor([contexts[0]]))
    ids = model.prepare_prompt(tokenizer, "Who?", compressed=compressed, mode="ft")["input_ids"][0].tolist()

    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    expected = encode("<s>[INST]") + [model.config.memory_token_id] * 4 + [model.config.ft_token_id]
    assert ids == expected + encode("Who?") + encode(" [/INST]")
