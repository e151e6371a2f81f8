"""Corpus BLEU (Papineni et al., 2002), self-contained.

It sits beside the `evaluate` module that uses it because evaluate copies a module's same-folder
imports only; the library imports it from here too, so there is one implementation.
"""

import math
from collections import Counter


def _tokens(text_or_tokens):
    """Whitespace-split a string; turn any other sequence (list, tuple, array, tensor) into a list."""
    if isinstance(text_or_tokens, str):
        return text_or_tokens.split()
    if hasattr(text_or_tokens, "tolist"):
        return text_or_tokens.tolist()
    return list(text_or_tokens)


def _references(reference, prediction_is_text):
    """One prediction's references as token lists.

    A reference has the prediction's form (a string, or a token sequence), or is a list of such
    references: for text, a list means several references; for tokens, a list of sequences does.
    """
    if prediction_is_text:
        refs = [reference] if isinstance(reference, str) else list(reference)
    else:
        reference = _tokens(reference)
        several = len(reference) > 0 and not isinstance(reference[0], (str, int))
        refs = reference if several else [reference]
    return [_tokens(ref) for ref in refs]


def _ngrams(tokens, n):
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(predictions, references, max_order=4, smooth=False):
    """Corpus-level BLEU with clipped n-gram precisions up to `max_order` and a brevity penalty.

    `predictions` are strings (split on whitespace) or token sequences (strings or ids); each entry of
    `references` is one reference of the same form or a list of them. The reference length for the
    brevity penalty is, per sentence, the reference length closest to the prediction's (the shorter on a
    tie), as in Papineni et al. and sacreBLEU. `smooth=True` adds one to every n-gram count and total
    (Lin and Och, 2004), which keeps short sentences from scoring zero.
    Returns `bleu`, `precisions`, `brevity_penalty`, `length_ratio`, `translation_length` and
    `reference_length`, the keys of the Hub's `bleu` metric.
    """
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references; pass one entry each.")
    if max_order < 1:
        raise ValueError(f"max_order must be >= 1, got {max_order}.")
    matches = [0] * max_order
    possible = [0] * max_order
    translation_length = reference_length = 0
    for prediction, reference in zip(predictions, references):
        refs = _references(reference, isinstance(prediction, str))
        if not refs:
            raise ValueError("Every prediction needs at least one reference; got an empty list of references.")
        prediction = _tokens(prediction)
        translation_length += len(prediction)
        reference_length += min((abs(len(ref) - len(prediction)), len(ref)) for ref in refs)[1]
        for n in range(1, max_order + 1):
            max_ref_counts = Counter()
            for ref in refs:
                max_ref_counts |= _ngrams(ref, n)
            pred_counts = _ngrams(prediction, n)
            matches[n - 1] += sum((pred_counts & max_ref_counts).values())
            possible[n - 1] += max(len(prediction) - n + 1, 0)

    if smooth:
        precisions = [(m + 1.0) / (p + 1.0) for m, p in zip(matches, possible)]
    else:
        precisions = [m / p if p > 0 else 0.0 for m, p in zip(matches, possible)]
    if min(precisions) > 0:
        geo_mean = math.exp(sum(math.log(p) for p in precisions) / max_order)
    else:
        geo_mean = 0.0
    ratio = translation_length / reference_length if reference_length > 0 else 0.0
    if ratio > 1.0:
        brevity_penalty = 1.0
    elif ratio > 0.0:
        brevity_penalty = math.exp(1.0 - 1.0 / ratio)
    else:
        brevity_penalty = 0.0
    return {
        "bleu": geo_mean * brevity_penalty,
        "precisions": precisions,
        "brevity_penalty": brevity_penalty,
        "length_ratio": ratio,
        "translation_length": translation_length,
        "reference_length": reference_length,
    }
