"""Exact-token accuracy as a local `evaluate` module: `evaluate.load("<path>/token_accuracy")` works offline.

The folder is self-contained (evaluate copies `token_accuracy.py` and its same-folder imports into its
module cache), so keep one `import` per line and no package imports.
"""

import datasets
import evaluate

from .accuracy_score import token_accuracy

_DESCRIPTION = """\
Exact-token accuracy: the fraction of reference positions whose predicted token (same position) is equal,
pooled over all examples, and the exact-match rate (prediction equals reference, length included).
Used to score autoencoding reconstructions of a compressed context.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted token sequences (integer ids or strings).
    references: list of reference token sequences of the same type.
Returns:
    token_accuracy, exact_match.
Examples:
    >>> metric = evaluate.load("src/context_compression/evaluation/token_accuracy")
    >>> metric.compute(predictions=[[1, 2, 3], [4, 5]], references=[[1, 2, 4], [4, 5]])
    {'token_accuracy': 0.8, 'exact_match': 0.5}
"""


def _features(token):
    return datasets.Features({"predictions": datasets.Sequence(token), "references": datasets.Sequence(token)})


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TokenAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            # Strings first: evaluate picks the first feature set that encodes the first example, and string
            # tokens would pass an int64 check only to fail later.
            features=[_features(datasets.Value("string")), _features(datasets.Value("int64"))],
        )

    def _compute(self, predictions, references):
        return token_accuracy(predictions, references)
