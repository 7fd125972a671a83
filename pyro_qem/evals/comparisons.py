"""Comparing models: pairwise probabilities, differences, odds ratios, best model and ranks.

Independent comparisons use the exact ``Beta(S + a0, N - S + b0)`` posteriors of each model
(one-dimensional quadrature, or seeded Monte Carlo when ``num_samples`` is given). Paired
comparisons use a correlated model of two models answering the same questions (a latent
bivariate normal thresholded at zero, :mod:`pyro_qem.evals.paired`), which accounts for
questions being easy or hard for both. Only the entries above the diagonal are computed; the
others are their complements, so ``P(A > B) + P(B > A) = 1`` holds by construction (ties have
probability zero).
"""

from typing import Any

import numpy as np
import pandas as pd

from . import _beta
from . import paired as _paired
from ._data import (
    SeedLike,
    as_generator,
    binary_matrix,
    check_alpha,
    check_num_samples,
    check_prior,
    model_column,
)

_SUMMARY = ["median", "lower", "upper", "p_a_better"]


def _posteriors(df: pd.DataFrame, prior: Any) -> tuple[list, list[_beta.BetaParams], np.ndarray]:
    names, scores = binary_matrix(df)
    a0, b0 = check_prior(prior)
    s, n = scores.sum(0), scores.shape[0]
    return names, [(float(si + a0), float(n - si + b0)) for si in s], scores


def _matrix(names: list, upper: dict[tuple[int, int], float]) -> pd.DataFrame:
    """Fill an M x M frame from its upper triangle, complements below, NaN diagonal."""
    out = np.full((len(names), len(names)), np.nan)
    for (i, j), p in upper.items():
        out[i, j], out[j, i] = p, 1.0 - p
    return pd.DataFrame(out, index=names, columns=names)


def independent_comparisons(
    df: pd.DataFrame,
    num_samples: int | None = None,
    prior: tuple[float, float] = (1, 1),
    seed: SeedLike = None,
) -> pd.DataFrame:
    """``P(model i more accurate than model j)`` from independent Beta posteriors.

    :param df: rows = questions, columns = models, values 0/1.
    :param num_samples: ``None`` (default) for exact quadrature; an integer for a Monte Carlo
        estimate from that many posterior draws (the ``bayes_evals`` behaviour).
    :param prior: Beta prior ``(a0, b0)`` on each accuracy.
    :param seed: seed or Generator for the Monte Carlo draws.
    :returns: M x M DataFrame (rows i, columns j), NaN diagonal.

    Example::

        >>> df = pd.DataFrame({"a": [1, 1, 1, 0], "b": [1, 0, 0, 0]})
        >>> independent_comparisons(df).round(3)
               a      b
        a    NaN  0.897
        b  0.103    NaN
    """
    names, params, _ = _posteriors(df, prior)
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    if num_samples is None:
        return _matrix(names, {(i, j): _beta.prob_greater(params[i], params[j]) for i, j in pairs})
    draws = _draws(params, check_num_samples(num_samples), as_generator(seed))
    out = np.full((len(names), len(names)), np.nan)
    for i, j in pairs:
        out[i, j] = np.mean(draws[:, i] > draws[:, j])
        out[j, i] = np.mean(draws[:, j] > draws[:, i])
    return pd.DataFrame(out, index=names, columns=names)


def _draws(params: list[_beta.BetaParams], num: int, rng: np.random.Generator) -> np.ndarray:
    a, b = np.array(params).T
    return rng.beta(a, b, size=(num, len(params)))


def paired_comparisons(df: pd.DataFrame, num_samples: int | None = None) -> pd.DataFrame:
    """``P(model i more accurate than model j)`` under the paired (correlated) model.

    Every pair is fitted by deterministic quadrature of its three-dimensional posterior.

    :param df: rows = questions (the same for all models), columns = models, values 0/1.
    :param num_samples: accepted for call compatibility with ``bayes_evals``; unused, since
        no sampling is involved.
    :returns: M x M DataFrame (rows i, columns j), NaN diagonal.

    Example::

        >>> df = pd.DataFrame({"a": [1, 1, 1, 0, 1], "b": [1, 0, 1, 0, 0]})
        >>> float(paired_comparisons(df).loc["a", "b"]) > 0.9
        True
    """
    names, scores = binary_matrix(df)
    upper = {}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            upper[i, j] = _paired.prob_a_better(_paired.PairedTable.from_scores(scores[:, i], scores[:, j]))
    return _matrix(names, upper)


def _pair(df: pd.DataFrame, model_a: Any, model_b: Any, prior: Any, is_paired: bool):
    names, params, scores = _posteriors(df, prior)
    i, j = model_column(names, model_a, "model_a"), model_column(names, model_b, "model_b")
    if i == j:
        raise ValueError(f"`model_a` and `model_b` are both {model_a!r}; pick two models.")
    if is_paired:
        _check_paired_prior(prior)
    return params[i], params[j], _paired.PairedTable.from_scores(scores[:, i], scores[:, j])


def _check_paired_prior(prior: Any) -> None:
    if check_prior(prior) != (1.0, 1.0):
        raise ValueError(
            f"`prior`={prior!r} is not supported with paired=True: the paired model has "
            "uniform priors on both accuracies. Leave prior at (1, 1)."
        )


def difference_interval(
    df: pd.DataFrame,
    model_a: Any,
    model_b: Any,
    alpha: float = 0.05,
    paired: bool = False,
    prior: tuple[float, float] = (1, 1),
) -> pd.Series:
    """Credible interval on ``theta_A - theta_B`` and ``P(theta_A > theta_B)``.

    :param df: rows = questions, columns = models, values 0/1.
    :param model_a: column of the first model.
    :param model_b: column of the second model.
    :param alpha: one minus the credibility level.
    :param paired: use the paired model (same questions) instead of independent posteriors.
    :param prior: Beta prior for the independent model.
    :returns: Series with ``median``, ``lower``, ``upper`` and ``p_a_better``.

    Example::

        >>> df = pd.DataFrame({"a": [1, 1, 1, 0], "b": [1, 0, 0, 0]})
        >>> difference_interval(df, "a", "b").round(3).tolist()
        [0.349, -0.196, 0.773, 0.897]
    """
    values, better = _contrast(df, model_a, model_b, alpha, paired, prior,
                               _paired.difference_quantile, _beta.difference_quantile)
    return pd.Series(values + [better], index=_SUMMARY, name="difference")


def odds_ratio_interval(
    df: pd.DataFrame,
    model_a: Any,
    model_b: Any,
    alpha: float = 0.05,
    paired: bool = False,
    prior: tuple[float, float] = (1, 1),
) -> pd.Series:
    """Credible interval on the odds ratio ``(theta_A / (1 - theta_A)) / (theta_B / (1 - theta_B))``.

    :param df: rows = questions, columns = models, values 0/1.
    :param model_a: column of the first model.
    :param model_b: column of the second model.
    :param alpha: one minus the credibility level.
    :param paired: use the paired model (same questions) instead of independent posteriors.
    :param prior: Beta prior for the independent model.
    :returns: Series with ``median``, ``lower``, ``upper`` and ``p_a_better``.

    Example::

        >>> df = pd.DataFrame({"a": [1, 1, 1, 0], "b": [1, 0, 0, 0]})
        >>> float(odds_ratio_interval(df, "a", "b")["median"]) > 1
        True
    """
    logs, better = _contrast(df, model_a, model_b, alpha, paired, prior,
                             _paired.log_odds_ratio_quantile, _beta.log_odds_ratio_quantile)
    return pd.Series(list(np.exp(logs)) + [better], index=_SUMMARY, name="odds_ratio")


def _contrast(df, model_a, model_b, alpha, paired, prior, paired_quantile, beta_quantile):
    """The median and interval quantiles of one contrast of two accuracies (from the
    paired table or the two Beta posteriors), and ``P(theta_A > theta_B)``."""
    alpha = check_alpha(alpha)
    pa, pb, table = _pair(df, model_a, model_b, prior, paired)
    probs = (0.5, alpha / 2, 1 - alpha / 2)
    if paired:
        return [paired_quantile(table, p) for p in probs], _paired.prob_a_better(table)
    return [beta_quantile(p, pa, pb) for p in probs], _beta.prob_greater(pa, pb)


def prob_best(
    df: pd.DataFrame,
    prior: tuple[float, float] = (1, 1),
    num_samples: int | None = None,
    seed: SeedLike = None,
) -> pd.Series:
    """``P(model i has the highest accuracy)`` under independent Beta posteriors.

    :param df: rows = questions, columns = models, values 0/1.
    :param prior: Beta prior ``(a0, b0)``.
    :param num_samples: ``None`` for exact quadrature, or a number of Monte Carlo draws.
    :param seed: seed or Generator for the draws.
    :returns: Series indexed by model, summing to one.

    Example::

        >>> df = pd.DataFrame({"a": [1, 1, 1, 0], "b": [1, 0, 0, 0], "c": [1, 1, 0, 0]})
        >>> prob_best(df).round(3).tolist()
        [0.697, 0.062, 0.24]
    """
    names, params, _ = _posteriors(df, prior)
    if num_samples is None:
        values = [_beta.prob_largest(params, i) for i in range(len(names))]
    else:
        draws = _draws(params, check_num_samples(num_samples), as_generator(seed))
        values = np.bincount(draws.argmax(axis=1), minlength=len(names)) / len(draws)
    return pd.Series(values, index=names, name="p_best")


def expected_ranks(
    df: pd.DataFrame, paired: bool = False, prior: tuple[float, float] = (1, 1)
) -> pd.Series:
    """Posterior expected rank of each model (1 = most accurate).

    By linearity, ``E[rank_i] = 1 + sum_{j != i} P(theta_j > theta_i)``, exact from the
    pairwise matrix of :func:`independent_comparisons` or :func:`paired_comparisons`.

    Example::

        >>> df = pd.DataFrame({"a": [1, 1, 1, 0], "b": [1, 0, 0, 0]})
        >>> expected_ranks(df).round(3).tolist()
        [1.103, 1.897]
    """
    if paired:
        _check_paired_prior(prior)
        matrix = paired_comparisons(df)
    else:
        matrix = independent_comparisons(df, prior=prior)
    ranks = 1.0 + np.nansum(matrix.to_numpy(), axis=0)
    return pd.Series(ranks, index=matrix.index, name="expected_rank")
