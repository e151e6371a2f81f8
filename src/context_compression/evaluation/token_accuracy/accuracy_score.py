"""Exact-token accuracy, self-contained.

It sits beside the `evaluate` module that uses it because evaluate copies a module's same-folder
imports only; the library imports it from here too, so there is one implementation.
"""


def _as_list(ids):
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


def token_accuracy(pred_ids_list, ref_ids_list):
    """Token accuracy and exact-match rate of predicted token sequences against references.

    `token_accuracy` is the fraction of all reference positions (pooled over examples) whose predicted
    token at the same position is equal; a prediction shorter than its reference misses the remaining
    positions, extra predicted tokens cost nothing here. `exact_match` is the fraction of examples whose
    prediction equals the reference exactly, length included, so it does penalise extra tokens. With no
    reference tokens at all, accuracy is 1.0 (no position is wrong).
    """
    if len(pred_ids_list) != len(ref_ids_list):
        raise ValueError(
            f"Got {len(pred_ids_list)} predictions but {len(ref_ids_list)} references; pass one entry each."
        )
    if len(ref_ids_list) == 0:
        raise ValueError("token_accuracy needs at least one example, got none.")
    correct = total = exact = 0
    for pred, ref in zip(pred_ids_list, ref_ids_list):
        pred, ref = _as_list(pred), _as_list(ref)
        correct += sum(p == r for p, r in zip(pred, ref))
        total += len(ref)
        exact += pred == ref
    return {
        "token_accuracy": correct / total if total > 0 else 1.0,
        "exact_match": exact / len(ref_ids_list),
    }
