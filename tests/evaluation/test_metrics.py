import ast
import math
from pathlib import Path

import pytest
import torch

from context_compression.evaluation import LOCAL_METRICS, bleu, load_metric, token_accuracy
from context_compression.evaluation.metrics import METRICS_DIR


def test_identical_is_one():
    result = bleu(["the cat sat on the mat", "a b c d e"], ["the cat sat on the mat", "a b c d e"])
    assert result["bleu"] == 1.0
    assert result["precisions"] == [1.0] * 4 and result["brevity_penalty"] == 1.0


def test_hand_computed_precisions():
    # "the cat sat on the mat" vs "the cat sat on a mat", both 6 tokens (BP = 1):
    # 1-grams: the(2, clipped to 1) cat sat on mat -> 5/6
    # 2-grams: the cat, cat sat, sat on | on the, the mat -> 3/5
    # 3-grams: the cat sat, cat sat on | sat on the, on the mat -> 2/4
    # 4-grams: the cat sat on | cat sat on the, sat on the mat -> 1/3
    # BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** (1/4)
    result = bleu(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert result["precisions"] == pytest.approx([5 / 6, 3 / 5, 2 / 4, 1 / 3])
    assert result["bleu"] == pytest.approx((1 / 12) ** 0.25)


def test_brevity_penalty():
    # 2 predicted vs 6 reference tokens: BP = exp(1 - 6/2) = exp(-2); bigram precisions are 2/2 and 1/1.
    result = bleu(["the cat"], ["the cat sat on the mat"], max_order=2)
    assert result["brevity_penalty"] == pytest.approx(math.exp(-2))
    assert result["bleu"] == pytest.approx(math.exp(-2))
    assert (result["translation_length"], result["reference_length"]) == (2, 6)


def test_clipping_and_multiple_references():
    # Unigram "the" appears 4 times but at most once in the reference: 1/4; longer than reference, so BP = 1.
    assert bleu(["the the the the"], ["the cat"], max_order=1)["bleu"] == pytest.approx(0.25)
    # With several references, counts clip at the maximum over references: "the" twice is allowed.
    assert bleu(["the the cat"], [["the cat", "the the dog"]], max_order=1)["precisions"] == [1.0]


def test_closest_reference_length_shorter_on_tie():
    # 5 predicted tokens; references of 4 and 6 are equally close -> the shorter (4) counts.
    assert bleu(["a b c d e"], [["a b c d", "a b c d e f"]])["reference_length"] == 4
    assert bleu(["a b c d e"], [["a b", "a b c d e f"]])["reference_length"] == 6


def test_smoothing():
    # "a b c" vs "a b d": raw precisions 2/3, 1/2, 0/1, 0/0 -> BLEU 0.
    # Add-one: 3/4, 2/3, 1/2, 1/1 -> (1/4) ** (1/4).
    assert bleu(["a b c"], ["a b d"])["bleu"] == 0.0
    assert bleu(["a b c"], ["a b d"], smooth=True)["bleu"] == pytest.approx(0.25**0.25)


def test_text_tokens_and_ids_agree():
    text = bleu(["x y z w v", "p q r"], ["x y z v w", "p q r s"])
    tokens = bleu([["x", "y", "z", "w", "v"], ["p", "q", "r"]], [["x", "y", "z", "v", "w"], ["p", "q", "r", "s"]])
    ids = bleu([torch.tensor([1, 2, 3, 4, 5]), [6, 7, 8]], [[[1, 2, 3, 5, 4]], [6, 7, 8, 9]])
    assert text == tokens == ids


def test_bleu_argument_errors():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="at least one reference"):
        bleu(["a"], [[]])


def test_token_accuracy():
    # 4 of 5 reference positions match; one of two sequences is exact.
    assert token_accuracy([[1, 2, 3], [4, 5]], [[1, 2, 4], [4, 5]]) == {"token_accuracy": 0.8, "exact_match": 0.5}
    # Short predictions miss the rest; long ones cost only exact match.
    assert token_accuracy([[1], [1, 2, 3]], [[1, 2], [1, 2]]) == {"token_accuracy": 0.75, "exact_match": 0.0}
    assert token_accuracy([torch.tensor([7, 8])], [torch.tensor([7, 9])])["token_accuracy"] == 0.5
    with pytest.raises(ValueError, match="at least one example"):
        token_accuracy([], [])


@pytest.mark.parametrize(
    "predictions, references, kwargs",
    [
        (["the cat sat on the mat", "a b c"], ["the cat sat on a mat", "a b d"], {}),
        (["the cat sat on the mat", "a b c"], [["the cat sat on a mat", "a cat"], ["a b d"]], {"smooth": True}),
        ([["x", "y", "z"], ["p", "q"]], [["x", "y", "w"], ["p", "q"]], {"max_order": 2}),
        ([[1, 2, 3, 4, 5], [3, 4, 5]], [[[1, 2, 3, 4, 9], [1, 2]], [[3, 4, 5, 6]]], {}),
        ([[1, 2, 3, 4, 5, 6, 7], [3, 4, 5]], [[1, 2, 3, 4, 9, 6, 7], [3, 4, 5, 6]], {}),
    ],
)
def test_bleu_module_matches_function(predictions, references, kwargs):
    module = load_metric("bleu", keep_in_memory=True)
    expected = bleu(predictions, references, **kwargs)
    assert module.compute(predictions=predictions, references=references, **kwargs) == expected
    assert expected["bleu"] > 0


@pytest.mark.parametrize(
    "predictions, references",
    [([[1, 2, 3], [4, 5]], [[1, 2, 4], [4, 5]]), ([["a", "b"], ["c"]], [["a", "c"], ["c"]])],
)
def test_token_accuracy_module_matches_function(predictions, references):
    module = load_metric("token_accuracy", keep_in_memory=True)
    assert module.compute(predictions=predictions, references=references) == token_accuracy(predictions, references)


@pytest.mark.parametrize("name", LOCAL_METRICS)
def test_modules_are_self_contained(name):
    # evaluate copies <name>/<name>.py and its same-folder imports only, and reads dependencies line by line.
    for path in Path(METRICS_DIR, name).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert len(node.names) == 1, f"{path.name}: one import per line"
                assert node.names[0].name in {"math", "datasets", "evaluate"}, path.name
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 1 or node.module in {"collections"}, f"{path.name}: {node.module}"


def test_unknown_metric():
    with pytest.raises(ValueError, match="rouge"):
        load_metric("rouge")
