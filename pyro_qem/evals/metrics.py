"""F1, precision, recall and accuracy intervals from a Dirichlet posterior over a confusion table.

With a ``Dirichlet(c, c, c, c)`` prior (default ``c = 1``) on the cell probabilities
``(TP, FP, FN, TN)``, the posterior is ``Dirichlet(counts + c)``. Each metric below is a
monotone function of a Beta-distributed aggregate of that Dirichlet, so its intervals are exact
Beta quantiles: precision ``~ Beta(a_TP, a_FP)``, recall ``~ Beta(a_TP, a_FN)``, accuracy
``~ Beta(a_TP + a_TN, a_FP + a_FN)``, specificity ``~ Beta(a_TN, a_FP)``, and
``F1 = 2 X / (1 + X)`` with ``X = TP / (TP + FP + FN) ~ Beta(a_TP, a_FP + a_FN)``.
For any other metric, :func:`confusion_samples` draws from the posterior with a seed.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import betaincinv

from ._data import (
    SeedLike,
    _scores_from_objects,
    as_generator,
    check_alpha,
    check_num_samples,
    check_prior,
)

CELLS = ("tp", "fp", "fn", "tn")
_METRICS = ("f1", "precision", "recall", "accuracy", "specificity")


def confusion_counts(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> dict[str, int]:
    """Count true/false positives/negatives of 0/1 labels and predictions.

    Example::

        >>> confusion_counts([1, 1, 0, 0], [1, 0, 1, 0])
        {'tp': 1, 'fp': 1, 'fn': 1, 'tn': 1}
    """
    t, p = (_binary_vector(v, name) for v, name in ((y_true, "y_true"), (y_pred, "y_pred")))
    if t.shape != p.shape:
        raise ValueError(f"`y_true` has {t.size} entries but `y_pred` has {p.size}; pass one per item.")
    cells = (t & p, ~t & p, t & ~p, ~t & ~p)
    return {name: int(c.sum()) for name, c in zip(CELLS, cells)}


def _binary_vector(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"`{name}` must be a non-empty 1-D sequence of 0/1, found shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        arr = _scores_from_objects(pd.Series(arr, dtype=object), None, name)
    if not np.isin(arr, (0, 1)).all():
        bad = pd.unique(arr[~np.isin(arr, (0, 1))])[:5].tolist()
        raise ValueError(f"`{name}` has values {bad}; expected only 0 and 1.")
    return arr.astype(bool)


def _posterior(counts: Any, prior: float) -> dict[str, float]:
    if not isinstance(counts, dict) or set(counts) != set(CELLS):
        raise ValueError(f"`counts` must be a dict with keys {CELLS}, found {counts!r}.")
    if any(not float(v).is_integer() or v < 0 for v in counts.values()):
        raise ValueError(f"`counts` must be non-negative whole numbers, found {counts!r}.")
    (c,) = check_prior((prior,), size=1, name="prior")
    return {k: float(counts[k]) + c for k in CELLS}


def _beta_parameters(post: dict[str, float]) -> dict[str, tuple[float, float]]:
    tp, fp, fn, tn = (post[k] for k in CELLS)
    return {
        "f1": (tp, fp + fn),
        "precision": (tp, fp),
        "recall": (tp, fn),
        "accuracy": (tp + tn, fp + fn),
        "specificity": (tn, fp),
    }


def confusion_intervals(
    counts: dict[str, int], alpha: float = 0.05, prior: float = 1.0
) -> pd.DataFrame:
    """Exact credible intervals on F1, precision, recall, accuracy and specificity.

    :param counts: ``{"tp", "fp", "fn", "tn"}`` counts, e.g. from :func:`confusion_counts`.
    :param alpha: one minus the credibility level.
    :param prior: symmetric Dirichlet concentration per cell.
    :returns: DataFrame with index ``["median", "lower", "upper"]`` and one column per metric.

    Example::

        >>> table = confusion_intervals({"tp": 8, "fp": 2, "fn": 1, "tn": 9})
        >>> table.loc[:, "precision"].round(3).tolist()
        [0.764, 0.482, 0.94]
    """
    alpha = check_alpha(alpha)
    params = _beta_parameters(_posterior(counts, prior))
    probs = np.array([0.5, alpha / 2, 1 - alpha / 2])
    out = {}
    for metric in _METRICS:
        q = betaincinv(*params[metric], probs)
        out[metric] = 2 * q / (1 + q) if metric == "f1" else q
    return pd.DataFrame(out, index=["median", "lower", "upper"])


def f1_intervals(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    alpha: float = 0.05,
    prior: float = 1.0,
) -> pd.DataFrame:
    """:func:`confusion_intervals` from 0/1 labels and predictions.

    Example::

        >>> round(float(f1_intervals([1, 1, 0, 0], [1, 0, 1, 0]).loc["median", "f1"]), 3)
        0.478
    """
    return confusion_intervals(confusion_counts(y_true, y_pred), alpha, prior)


def confusion_samples(
    counts: dict[str, int], num_samples: int = 10_000, prior: float = 1.0, seed: SeedLike = None
) -> pd.DataFrame:
    """Draws of the cell probabilities and the metrics, for metrics not covered above.

    :param counts: ``{"tp", "fp", "fn", "tn"}`` counts.
    :param num_samples: number of posterior draws.
    :param prior: symmetric Dirichlet concentration per cell.
    :param seed: seed or Generator.
    :returns: DataFrame with columns ``tp, fp, fn, tn`` (probabilities) and the metrics.

    Example::

        >>> draws = confusion_samples({"tp": 8, "fp": 2, "fn": 1, "tn": 9}, 1000, seed=0)
        >>> mcc = (draws.tp * draws.tn - draws.fp * draws.fn) / np.sqrt(
        ...     (draws.tp + draws.fp) * (draws.tp + draws.fn)
        ...     * (draws.tn + draws.fp) * (draws.tn + draws.fn))
        >>> bool(0.3 < mcc.median() < 0.9)
        True
    """
    post = _posterior(counts, prior)
    rng = as_generator(seed)
    p = rng.dirichlet([post[k] for k in CELLS], size=check_num_samples(num_samples))
    draws = pd.DataFrame(p, columns=list(CELLS))
    draws["f1"] = 2 * draws.tp / (2 * draws.tp + draws.fp + draws.fn)
    draws["precision"] = draws.tp / (draws.tp + draws.fp)
    draws["recall"] = draws.tp / (draws.tp + draws.fn)
    draws["accuracy"] = draws.tp + draws.tn
    draws["specificity"] = draws.tn / (draws.tn + draws.fp)
    return draws
