import json
import re

import pytest

from context_compression.data import PWC_DEV_PATH, demo_splits, generate_corpus
from context_compression.data.corpus import COLOURS, NAMES


def test_same_seed_same_documents_other_seed_different():
    assert generate_corpus(30, seed=3) == generate_corpus(30, seed=3)
    assert generate_corpus(30, seed=3) != generate_corpus(30, seed=4)


def test_sentence_counts_respect_bounds():
    # Every template ends with the only "." of its sentence.
    counts = [doc.count(".") for doc in generate_corpus(200, seed=1, min_sentences=2, max_sentences=5)]
    assert min(counts) == 2 and max(counts) == 5


def test_small_vocabulary_but_varied_documents():
    docs = generate_corpus(300)
    words = {w for doc in docs for w in re.findall(r"[A-Za-z]+", doc)}
    assert len(words) < 400  # small enough for a tiny LM to learn
    assert len(set(docs)) == len(docs)
    sentences = [s for doc in docs for s in doc.split(". ")]
    assert len(set(sentences)) > 0.95 * len(sentences)
    text = " ".join(docs)
    assert all(name in text for name in NAMES)
    assert all(colour in text for colour in COLOURS)
    assert len(set(re.findall(r"\b\d+\b", text))) > 50  # numbers vary


def test_documents_follow_a_small_cast():
    # Each document draws its people from two or three names, so they recur within it.
    for doc in generate_corpus(50, seed=2):
        assert 2 <= sum(name in re.findall(r"[A-Z][a-z]+", doc) for name in NAMES) <= 3


def test_grammar_articles():
    assert not re.search(r"\ba [aeiou]", " ".join(generate_corpus(500)))


def test_demo_splits_deterministic_and_disjoint():
    train, heldout = demo_splits()
    assert (train, heldout) == demo_splits()
    assert len(train) == 2000 and 190 <= len(heldout) <= 200
    assert not set(train) & set(heldout)
    assert demo_splits(seed=1)[0] != train


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_documents=-1),
        dict(num_documents=1, min_sentences=0),
        dict(num_documents=1, min_sentences=4, max_sentences=3),
    ],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        generate_corpus(**kwargs)


def test_pwc_samples_ship_with_the_package():
    with open(PWC_DEV_PATH, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 6
    assert all(set(row) == {"input", "prompt", "answer"} for row in rows)
    assert (PWC_DEV_PATH.parent / "PWC_LICENSE").read_text().startswith("Creative Commons Legal Code")
