"""Corpus BLEU as a local `evaluate` module: `evaluate.load("<path>/bleu")` works offline.

The Hub's `bleu` needs a download; this folder is self-contained (evaluate copies `bleu.py` and its
same-folder imports into its module cache), so keep one `import` per line and no package imports.
"""

import datasets
import evaluate

from .bleu_score import bleu

_CITATION = """\
@inproceedings{papineni2002bleu,
  title={Bleu: a Method for Automatic Evaluation of Machine Translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing},
  booktitle={Proceedings of the 40th Annual Meeting of the Association for Computational Linguistics},
  pages={311--318},
  year={2002}
}
"""

_DESCRIPTION = """\
Corpus BLEU: the geometric mean of clipped n-gram precisions (n = 1..max_order) times a brevity penalty.
Strings are split on whitespace; token sequences (strings or ids) are used as given.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of strings, or list of token sequences (strings or integer ids).
    references: per prediction, one reference of the same form or a list of references.
    max_order: largest n-gram order, default 4.
    smooth: add-one smoothing of the precisions (Lin and Och, 2004), default False.
Returns:
    bleu, precisions, brevity_penalty, length_ratio, translation_length, reference_length.
Examples:
    >>> metric = evaluate.load("src/context_compression/evaluation/bleu")
    >>> metric.compute(predictions=["the cat sat on the mat"], references=[["the cat sat on the mat"]])["bleu"]
    1.0
"""


def _features(token):
    """Feature sets for one token type: several references first, then a single reference."""
    return [
        datasets.Features({"predictions": token, "references": datasets.Sequence(token)}),
        datasets.Features({"predictions": token, "references": token}),
    ]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_features(datasets.Value("string"))
            + _features(datasets.Sequence(datasets.Value("string")))
            + _features(datasets.Sequence(datasets.Value("int64"))),
            reference_urls=["https://aclanthology.org/P02-1040/"],
        )

    def _compute(self, predictions, references, max_order=4, smooth=False):
        return bleu(predictions, references, max_order=max_order, smooth=smooth)
