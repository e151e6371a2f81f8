"""The context-compression pipeline against hand-built prompts and direct `compress` / `generate` calls."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, pipeline

from context_compression import CompressedContext
from context_compression.data import generate_corpus
from context_compression.pipelines import ContextCompressionPipeline

MEMORY, RATE = 4, 2  # the shared `icae` fixture: 8 context tokens per segment, 4 slots each
QUESTIONS = ["Who bought the ropes?", "Where is the harbour?", "What colour was the shelf?"]


@pytest.fixture
def pipe(icae):
    model, tokenizer = icae
    return pipeline("context-compression", model=model, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def contexts():
    """Three contexts of increasing length (several segments each at 8 tokens per segment)."""
    documents = generate_corpus(3, seed=3)
    return [documents[0][:40], documents[1][:90], documents[2][:160]]


def context_ids(tokenizer, context):
    return tokenizer(context, add_special_tokens=False, return_tensors="pt").input_ids


def greedy(model, tokenizer, prompt_ids, compressed, **generate_kwargs):
    """Decode `model.generate` on one hand-built prompt."""
    generate_kwargs.setdefault("max_new_tokens", 6)
    output = model.generate(
        input_ids=torch.tensor([prompt_ids]), compressed=compressed, do_sample=False,
        pad_token_id=tokenizer.pad_token_id, **generate_kwargs,
    )
    return tokenizer.batch_decode(output, skip_special_tokens=True)


def ft_prompt(tokenizer, num_slots, question):
    """
    The instruction prompt written out: the chat template's text around a user turn of `<MEM>`*k `<FT>` question,
    each part tokenized on its own (as ICAE built its prompts).
    """
    before, after = tokenizer.apply_chat_template(
        [{"role": "user", "content": "@@"}], tokenize=False, add_generation_prompt=True
    ).split("@@")
    turn = [before, "<MEM>" * num_slots + "<FT>", question, after]
    return [i for part in turn for i in tokenizer(part, add_special_tokens=False).input_ids]


def expected_slots(num_tokens):
    return math.ceil(num_tokens / (MEMORY * RATE)) * MEMORY


def test_task_is_registered(pipe):
    assert isinstance(pipe, ContextCompressionPipeline)


def test_answer_equals_generate_on_hand_built_prompt(pipe, icae, contexts):
    model, tokenizer = icae
    ids = context_ids(tokenizer, contexts[1])
    compressed = model.compress(ids)
    prompt = ft_prompt(tokenizer, expected_slots(ids.shape[1]), QUESTIONS[0])
    assert prompt.count(model.config.memory_token_id) == compressed.num_slots.item()

    result = pipe(contexts[1], question=QUESTIONS[0], max_new_tokens=6)

    assert result["answer"] == greedy(model, tokenizer, prompt, compressed)[0]
    assert result["answer"]


def test_counts(pipe, icae, contexts):
    _, tokenizer = icae
    for context in contexts:
        result = pipe(context, question=QUESTIONS[0], max_new_tokens=1)
        num_tokens = len(tokenizer(context, add_special_tokens=False).input_ids)
        assert result["context_tokens"] == num_tokens
        assert result["memory_slots"] == expected_slots(num_tokens)
        assert result["compression_ratio"] == pytest.approx(num_tokens / expected_slots(num_tokens))
    assert len({pipe(c, question="q", max_new_tokens=1)["memory_slots"] for c in contexts}) == 3


def test_many_questions_compress_once_and_match_one_by_one(pipe, icae, contexts, monkeypatch):
    model, _ = icae
    one_by_one = [pipe(contexts[2], question=q, max_new_tokens=6)["answer"] for q in QUESTIONS]
    calls = []
    compress = model.compress
    monkeypatch.setattr(model, "compress", lambda *args, **kwargs: calls.append(args) or compress(*args, **kwargs))

    result = pipe(contexts[2], questions=QUESTIONS, max_new_tokens=6)

    assert result["answers"] == one_by_one
    assert len(calls) == 1
    assert "answer" not in result


def test_batch_of_contexts_equals_one_by_one(pipe, contexts):
    one_by_one = [pipe(c, question=QUESTIONS[1], max_new_tokens=6) for c in contexts]
    assert pipe(contexts, question=QUESTIONS[1], max_new_tokens=6, batch_size=3) == one_by_one
    assert pipe(contexts, question=QUESTIONS[1], max_new_tokens=6, batch_size=2) == one_by_one

    many = pipe(contexts, questions=QUESTIONS[:2], max_new_tokens=6, batch_size=3)
    assert [r["answers"] for r in many] == [
        [pipe(c, question=q, max_new_tokens=6)["answer"] for q in QUESTIONS[:2]] for c in contexts
    ]


def test_reconstruct_and_continue_modes(pipe, icae, contexts):
    model, tokenizer = icae
    config = model.config
    ids = context_ids(tokenizer, contexts[0])
    compressed = model.compress(ids)
    memory = [config.memory_token_id] * expected_slots(ids.shape[1])

    reconstruction = pipe(contexts[0], mode="reconstruct")["reconstruction"]
    # By default a reconstruction may be as long as the context, plus its end of sequence.
    expected = greedy(model, tokenizer, memory + [config.ae_token_id], compressed, max_new_tokens=ids.shape[1] + 1)
    assert reconstruction == expected[0]

    continuation = pipe(contexts[0], mode="continue", max_new_tokens=5)["continuation"]
    assert continuation == greedy(model, tokenizer, memory, compressed, max_new_tokens=5)[0]
    with_lm_token = pipe(contexts[0], mode="continue", lm_token=True, max_new_tokens=5)["continuation"]
    assert with_lm_token == greedy(model, tokenizer, memory + [config.lm_token_id], compressed, max_new_tokens=5)[0]


def test_return_compressed_equals_compress(pipe, icae, contexts):
    model, tokenizer = icae
    results = pipe(contexts, question=QUESTIONS[0], max_new_tokens=2, batch_size=3, return_compressed=True)
    for context, result in zip(contexts, results):
        expected = model.compress(context_ids(tokenizer, context))
        got = result["compressed"]
        assert isinstance(got, CompressedContext)
        torch.testing.assert_close(got.memory_embeds, expected.memory_embeds)
        assert torch.equal(got.memory_attention_mask, expected.memory_attention_mask)
        assert torch.equal(got.context_lengths, expected.context_lengths)
    assert "compressed" not in pipe(contexts[0], question=QUESTIONS[0], max_new_tokens=1)


def test_generate_kwargs_pass_through(pipe, icae, contexts):
    model, tokenizer = icae
    ids = context_ids(tokenizer, contexts[1])
    prompt = ft_prompt(tokenizer, expected_slots(ids.shape[1]), QUESTIONS[2])
    beams = dict(num_beams=3, num_return_sequences=2, max_new_tokens=4)

    result = pipe(contexts[1], question=QUESTIONS[2], **beams)

    assert result["answer"] == greedy(model, tokenizer, prompt, model.compress(ids), **beams)
    short = pipe(contexts[1], question=QUESTIONS[2], max_new_tokens=2)["answer"]
    assert short == greedy(model, tokenizer, prompt, model.compress(ids), max_new_tokens=2)[0]


def test_construction_parameters_apply_until_a_call_overrides_them(icae, contexts):
    model, tokenizer = icae
    pipe = pipeline("context-compression", model=model, tokenizer=tokenizer, mode="continue", max_new_tokens=3)
    assert pipe(contexts[0])["continuation"] == pipe(contexts[0], mode="continue", max_new_tokens=3)["continuation"]
    assert "answer" in pipe(contexts[0], mode="answer", question="q")


def test_truncation(pipe, icae, contexts):
    model, tokenizer = icae
    with pytest.raises(ValueError, match="truncation=True"):
        pipe(contexts[2], question="q", max_context_length=10)

    result = pipe(contexts[2], question="q", max_context_length=10, truncation=True, return_compressed=True, max_new_tokens=1)

    assert result["context_tokens"] == 10
    expected = model.compress(context_ids(tokenizer, contexts[2])[:, :10])
    torch.testing.assert_close(result["compressed"].memory_embeds, expected.memory_embeds)


def test_tokenizer_must_match_model(icae, tiny_tokenizer):
    model, tokenizer = icae
    with pytest.raises(ValueError, match="<MEM>"):
        ContextCompressionPipeline(model=model, tokenizer=tiny_tokenizer)  # lacks the memory and mode tokens

    shifted = copy.deepcopy(tiny_tokenizer)
    shifted.add_special_tokens({"additional_special_tokens": ["<other>", "<MEM>", "<AE>", "<LM>", "<FT>"]})
    with pytest.raises(ValueError, match="config expects"):
        pipeline("context-compression", model=model, tokenizer=shifted)

    with pytest.raises(ValueError, match="needs a tokenizer"):
        ContextCompressionPipeline(model=model)


def test_plain_language_model_is_rejected(tiny_llama_config, tiny_tokenizer):
    with pytest.raises(ValueError, match="context-compression model"):
        ContextCompressionPipeline(model=AutoModelForCausalLM.from_config(tiny_llama_config), tokenizer=tiny_tokenizer)


@pytest.mark.parametrize(
    "inputs, kwargs, message",
    [
        ("", {"question": "q"}, "Context 0 is empty"),
        (["A context.", "   "], {"question": "q"}, "Context 1 is empty"),
        ([], {"question": "q"}, "non-empty list"),
        (["A context.", 3], {"question": "q"}, "must be strings"),
        ("A context.", {}, "needs `question=`"),
        ("A context.", {"question": "q", "questions": ["q"]}, "not both"),
        ("A context.", {"questions": "q"}, "list of strings"),
        ("A context.", {"question": "q", "mode": "reconstruct"}, "takes no question"),
        ("A context.", {"mode": "summarise"}, "Unknown mode"),
    ],
)
def test_bad_input_raises(pipe, inputs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(inputs, **kwargs)
