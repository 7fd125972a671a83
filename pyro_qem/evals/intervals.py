"""Intervals on one model's accuracy from IID 0/1 scores: Bayes, Wilson, Clopper-Pearson, CLT.

The Bayes interval is the equal-tailed credible interval of the conjugate posterior
``Beta(S + a0, N - S + b0)``. Wilson and Clopper-Pearson are frequentist intervals that agree
with ``scipy.stats.binomtest(S, N).proportion_ci``. The CLT (Wald) interval is provided only for
side-by-side display: it has zero width at 0/N and N/N and under-covers for small N.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import betaincinv, ndtri

from ._data import binary_matrix, check_alpha, check_prior

Interval = tuple[np.ndarray, np.ndarray]


def _check_counts(successes: Any, trials: Any) -> tuple[np.ndarray, np.ndarray]:
    """Raise unless ``0 <= successes <= trials`` are integers and ``trials >= 1``."""
    s, n = np.broadcast_arrays(np.asarray(successes), np.asarray(trials))
    for name, v in (("successes", s), ("trials", n)):
        if not np.issubdtype(v.dtype, np.number) or np.any(v != np.round(v)):
            raise ValueError(f"`{name}` must hold whole numbers, found {v!r}.")
    if np.any(n < 1) or np.any(s < 0) or np.any(s > n):
        raise ValueError(
            f"Expected 0 <= successes <= trials and trials >= 1, found successes={s!r}, "
            f"trials={n!r}."
        )
    return s.astype(float), n.astype(float)


def beta_interval(
    successes: Any, trials: Any, alpha: float = 0.05, prior: tuple[float, float] = (1, 1)
) -> Interval:
    """Equal-tailed Bayesian credible interval from the ``Beta(S + a0, N - S + b0)`` posterior.

    :param successes: number correct ``S`` (scalar or array).
    :param trials: number of questions ``N``.
    :param alpha: one minus the credibility level.
    :param prior: Beta prior parameters ``(a0, b0)``.
    :returns: ``(lower, upper)`` arrays.

    Example::

        >>> lo, hi = beta_interval(20, 20)
        >>> round(float(lo), 3), round(float(hi), 3)
        (0.839, 0.999)
    """
    s, n = _check_counts(successes, trials)
    alpha = check_alpha(alpha)
    a0, b0 = check_prior(prior)
    a, b = s + a0, n - s + b0
    return betaincinv(a, b, alpha / 2), betaincinv(a, b, 1 - alpha / 2)


def wilson_interval(successes: Any, trials: Any, alpha: float = 0.05) -> Interval:
    """Wilson score interval (as ``binomtest(S, N).proportion_ci(method="wilson")``).

    :param successes: number correct ``S``.
    :param trials: number of questions ``N``.
    :param alpha: one minus the confidence level.
    :returns: ``(lower, upper)`` arrays.

    Example::

        >>> lo, hi = wilson_interval(7, 10)
        >>> round(float(lo), 4), round(float(hi), 4)
        (0.3968, 0.8922)
    """
    s, n = _check_counts(successes, trials)
    z = ndtri(1 - check_alpha(alpha) / 2)
    p = s / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.maximum(centre - half, 0.0), np.minimum(centre + half, 1.0)


def clopper_pearson_interval(successes: Any, trials: Any, alpha: float = 0.05) -> Interval:
    """Exact Clopper-Pearson interval (as ``binomtest(S, N).proportion_ci(method="exact")``).

    :param successes: number correct ``S``.
    :param trials: number of questions ``N``.
    :param alpha: one minus the confidence level.
    :returns: ``(lower, upper)`` arrays.

    Example::

        >>> lo, hi = clopper_pearson_interval(0, 10)
        >>> float(lo), round(float(hi), 4)
        (0.0, 0.3085)
    """
    s, n = _check_counts(successes, trials)
    alpha = check_alpha(alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        lower = np.where(s > 0, betaincinv(np.maximum(s, 1), n - s + 1, alpha / 2), 0.0)
        upper = np.where(s < n, betaincinv(s + 1, np.maximum(n - s, 1), 1 - alpha / 2), 1.0)
    return lower, upper


def clt_interval(successes: Any, trials: Any, alpha: float = 0.05) -> Interval:
    """CLT (Wald) interval ``p +- z sqrt(p (1 - p) / N)``, clipped to [0, 1]. Display only.

    It has zero width at 0/N and N/N and covers far less often than claimed for small N;
    prefer :func:`beta_interval` or :func:`wilson_interval`.

    Example::

        >>> [float(v) for v in clt_interval(10, 10)]
        [1.0, 1.0]
    """
    s, n = _check_counts(successes, trials)
    z = ndtri(1 - check_alpha(alpha) / 2)
    p = s / n
    half = z * np.sqrt(p * (1 - p) / n)
    return np.maximum(p - half, 0.0), np.minimum(p + half, 1.0)


def _frame(df: pd.DataFrame, method: Callable[..., Interval], **kwargs: Any) -> pd.DataFrame:
    """Apply an interval method to every model column; index ``["lower", "upper"]``."""
    names, scores = binary_matrix(df)
    lower, upper = method(scores.sum(0), np.full(len(names), scores.shape[0]), **kwargs)
    return pd.DataFrame([lower, upper], index=["lower", "upper"], columns=names)


def independent_intervals(
    df: pd.DataFrame, alpha: float = 0.05, prior: tuple[float, float] = (1, 1)
) -> pd.DataFrame:
    """Bayesian credible intervals on each model's accuracy, questions treated as IID.

    :param df: rows = questions, columns = models, values 0/1.
    :param alpha: one minus the credibility level.
    :param prior: Beta prior ``(a0, b0)`` on each accuracy.
    :returns: DataFrame with index ``["lower", "upper"]`` and one column per model.

    Example::

        >>> df = pd.DataFrame({"a": [1, 1, 0, 1], "b": [0, 1, 0, 0]})
        >>> independent_intervals(df).round(3)
                   a      b
        lower  0.284  0.053
        upper  0.947  0.716
    """
    return _frame(df, beta_interval, alpha=alpha, prior=prior)


def wilson_intervals(df: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Wilson intervals per model column; same layout as :func:`independent_intervals`.

    Example::

        >>> wilson_intervals(pd.DataFrame({"a": [1, 1, 0, 1]})).round(3)
                   a
        lower  0.301
        upper  0.954
    """
    return _frame(df, wilson_interval, alpha=alpha)


def clopper_pearson_intervals(df: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Clopper-Pearson intervals per model column; same layout as :func:`independent_intervals`.

    Example::

        >>> clopper_pearson_intervals(pd.DataFrame({"a": [1, 1, 0, 1]})).round(3)
                   a
        lower  0.194
        upper  0.994
    """
    return _frame(df, clopper_pearson_interval, alpha=alpha)


def clt_intervals(df: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """CLT intervals per model column, for display next to better intervals only.

    Example::

        >>> clt_intervals(pd.DataFrame({"a": [1, 1, 1, 1]}))
                 a
        lower  1.0
        upper  1.0
    """
    return _frame(df, clt_interval, alpha=alpha)


def interval_table(
    df: pd.DataFrame, alpha: float = 0.05, prior: tuple[float, float] = (1, 1)
) -> pd.DataFrame:
    """One row per model: score, accuracy and the Bayes, Wilson, Clopper-Pearson, CLT intervals.

    :param df: rows = questions, columns = models, values 0/1.
    :param alpha: one minus the interval level.
    :param prior: Beta prior for the Bayes interval.
    :returns: DataFrame indexed by model.

    Example::

        >>> interval_table(pd.DataFrame({"a": [1, 1, 0, 1]})).loc["a", "accuracy"]
        np.float64(0.75)
    """
    names, scores = binary_matrix(df)
    s, n = scores.sum(0), np.full(len(names), scores.shape[0])
    table = pd.DataFrame({"correct": s, "questions": n, "accuracy": s / n}, index=names)
    methods = {
        "bayes": lambda: beta_interval(s, n, alpha, prior),
        "wilson": lambda: wilson_interval(s, n, alpha),
        "clopper_pearson": lambda: clopper_pearson_interval(s, n, alpha),
        "clt": lambda: clt_interval(s, n, alpha),
    }
    for label, method in methods.items():
        table[f"{label}_lower"], table[f"{label}_upper"] = method()
    return table
