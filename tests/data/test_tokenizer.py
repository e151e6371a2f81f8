import pytest
from transformers import AutoTokenizer

from context_compression.data import build_tokenizer, generate_corpus


def test_special_tokens_and_size(tiny_tokenizer):
    tok = tiny_tokenizer
    assert len(tok) == 512
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == ("<unk>", "<s>", "</s>", "<pad>")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)


def test_bos_prepended_no_eos(tiny_tokenizer):
    ids = tiny_tokenizer("The old baker in Lisbon.").input_ids
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert tiny_tokenizer.bos_token_id not in ids[1:] and tiny_tokenizer.eos_token_id not in ids
    assert tiny_tokenizer("x", add_special_tokens=False).input_ids[0] != tiny_tokenizer.bos_token_id


@pytest.mark.parametrize("text", generate_corpus(5, seed=9) + ["Ünïcödé, emoji 🎉, tabs\tand  spaces\n", ""])
def test_any_text_round_trips(tiny_tokenizer, text):
    ids = tiny_tokenizer(text).input_ids
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tiny_tokenizer.unk_token_id not in ids


def test_learned_merges_compress_the_corpus(tiny_tokenizer):
    text = generate_corpus(1, seed=5)[0]
    assert len(tiny_tokenizer(text).input_ids) < len(text.encode()) / 2


def test_chat_template(tiny_tokenizer):
    messages = [{"role": "user", "content": "Who left Lisbon?"}, {"role": "assistant", "content": "Ada."}]
    assert tiny_tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<s><|user|>\nWho left Lisbon?</s>\n<|assistant|>\nAda.</s>\n"
    )
    prompt = tiny_tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<s><|user|>\nWho left Lisbon?</s>\n<|assistant|>\n"
    ids = tiny_tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, return_dict=False)
    assert ids == tiny_tokenizer(prompt, add_special_tokens=False).input_ids
    assert ids[-2] == tiny_tokenizer.convert_tokens_to_ids("<|assistant|>")  # role markers are single tokens


def test_chat_template_rejects_unknown_role(tiny_tokenizer):
    with pytest.raises(Exception, match="Unknown role"):
        tiny_tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_padding_batch(tiny_tokenizer):
    batch = tiny_tokenizer(["a b", "The old baker in Lisbon."], padding=True, return_tensors="pt")
    assert batch.input_ids.shape == batch.attention_mask.shape
    assert (batch.input_ids[0][batch.attention_mask[0] == 0] == tiny_tokenizer.pad_token_id).all()


def test_save_and_load(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = generate_corpus(1, seed=7)[0]
    assert loaded(text).input_ids == tiny_tokenizer(text).input_ids
    assert loaded.chat_template == tiny_tokenizer.chat_template
    assert loaded.all_special_ids == tiny_tokenizer.all_special_ids
    assert len(loaded) == len(tiny_tokenizer)


def test_same_texts_same_tokenizer():
    texts = generate_corpus(50)
    assert build_tokenizer(texts).get_vocab() == build_tokenizer(texts).get_vocab()


def test_vocab_too_small_raises():
    with pytest.raises(ValueError, match="vocab_size=100"):
        build_tokenizer(["abc"], vocab_size=100)
