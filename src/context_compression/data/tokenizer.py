"""Train a small byte-level BPE tokenizer locally, so tests and the demo never download one.

Byte-level BPE has no out-of-vocabulary input: every string round-trips through encode/decode, whatever
text the tokenizer was trained on. The result behaves like a Llama-style tokenizer (`<s>` prepended,
`</s>` as end of sequence, a pad token, a chat template) so code written against real checkpoints runs
unchanged on it.
"""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# ChatML-like: "<|user|>\n{content}</s>\n" per message, "<|assistant|>\n" as the generation prompt.
# Written on one line because transformers renders chat templates with trim_blocks/lstrip_blocks.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role ' + message['role'] + '; use system, user or assistant.') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of at most `vocab_size` entries on `texts`.

    Special tokens take the first ids (`<unk>`=0, `<s>`=1, `</s>`=2, `<pad>`=3, then the chat role
    markers), followed by the 256 byte symbols and the learned merges.
    """
    special_tokens = [UNK, BOS, EOS, PAD, *ROLE_TOKENS]
    minimum = len(special_tokens) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} is too small; byte-level BPE needs at least {minimum}.")

    backend = Tokenizer(models.BPE(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=list(ROLE_TOKENS),
        add_bos_token=True,
        add_eos_token=False,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
