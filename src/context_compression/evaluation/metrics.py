"""The library's metrics as plain functions, and a loader for their offline `evaluate` modules.

Each implementation lives in its `evaluate` module's folder (`<name>/`), because evaluate copies only a
module's same-folder imports; importing it from there keeps one implementation for both entry points.
"""

from pathlib import Path

from .bleu.bleu_score import bleu
from .token_accuracy.accuracy_score import token_accuracy

METRICS_DIR = Path(__file__).parent
LOCAL_METRICS = ("bleu", "token_accuracy")


def load_metric(name: str, **kwargs):
    """`evaluate.load` on the local module folder `name` (one of `LOCAL_METRICS`), so no download happens.

    `kwargs` go to `evaluate.load` (e.g. `experiment_id`, `keep_in_memory`).
    """
    if name not in LOCAL_METRICS:
        raise ValueError(f"Unknown metric {name!r}; the local metrics are {', '.join(LOCAL_METRICS)}.")
    # Imported here: evaluate imports datasets, which callers of bleu() and token_accuracy() do not need.
    import evaluate

    return evaluate.load(str(METRICS_DIR / name), **kwargs)


__all__ = ["LOCAL_METRICS", "METRICS_DIR", "bleu", "load_metric", "token_accuracy"]
