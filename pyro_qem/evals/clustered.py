"""Accuracy intervals when questions come in clusters (e.g. tasks or subjects of a benchmark).

Questions from the same cluster tend to be answered right or wrong together, so treating them
as independent gives intervals that are too narrow; the model below lets each cluster have its
own accuracy around a shared mean.

Hierarchical Beta-Binomial model: ``d ~ Gamma(1, 1)``, ``theta ~ Beta(1, 1)``, per-cluster
``theta_t ~ Beta(d theta, d (1 - theta))`` and ``y_it ~ Bernoulli(theta_t)``. Integrating the
``theta_t`` out leaves ``BetaBinomial(N_t, d theta, d (1 - theta))`` per cluster and a
two-dimensional posterior over ``(log d, logit theta)``, integrated deterministically
(:mod:`._grid`). The interval is on ``theta``, the accuracy on a new cluster's typical question.
"""

from collections.abc import Hashable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit, log_expit, logit

from ._data import binary_matrix, check_alpha, cluster_labels
from ._grid import GridPosterior, fit_grid

ClusterCounts = tuple[tuple[int, int, int], ...]  # (correct, size, multiplicity) per kind
_HALF_WIDTH = (6.5, 6.5)
_SPACING = (0.75, 0.5)


def cluster_counts(correct: np.ndarray, labels: np.ndarray) -> ClusterCounts:
    """Group questions by cluster: ``(correct, size, how many clusters look like this)``."""
    frame = pd.DataFrame({"y": np.asarray(correct), "c": pd.factorize(labels)[0]})
    per_cluster = frame.groupby("c")["y"].agg(["sum", "size"])
    kinds = per_cluster.value_counts().sort_index()
    return tuple((int(s), int(n), int(m)) for (s, n), m in kinds.items())


def _log_posterior(q: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Unnormalised log density of ``(log d, logit theta)``.

    The Beta-Binomial terms use ``B(a + s, b + n - s) / B(a, b) = prod_{i<s} (a + i)
    prod_{i<n-s} (b + i) / prod_{i<n} (a + b + i)``, which stays exact for tiny ``a, b``.
    """
    log_d, z = q[:, 0], q[:, 1]
    d = np.exp(log_d)[:, None]
    a, b = d * expit(z)[:, None], d * expit(-z)[:, None]
    s, n, m = counts
    steps = np.arange(n.max())
    with np.errstate(all="ignore"):  # non-finite values far out are mapped to -1e300 later
        prefix = [_prefix_log_sum(x + steps) for x in (a, b, a + b)]
        loglik = prefix[0][:, s] + prefix[1][:, n - s] - prefix[2][:, n]
    log_prior = log_expit(z) + log_expit(-z) + log_d - d[:, 0]
    return loglik @ m + log_prior


def _prefix_log_sum(x: np.ndarray) -> np.ndarray:
    """``out[:, j] = sum_{i<j} log x[:, i]``."""
    return np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(np.log(x), axis=1)], axis=1)


@lru_cache(maxsize=1024)
def clustered_posterior(counts: ClusterCounts) -> GridPosterior:
    """Tabulated posterior over ``(log d, logit theta)`` for grouped cluster counts.

    :param counts: output of :func:`cluster_counts`.
    :returns: a :class:`~pyro_qem.evals._grid.GridPosterior`.
    """
    table = np.array(counts, dtype=np.int64).T  # (3, kinds): correct, size, multiplicity
    total_s = sum(s * m for s, _, m in counts)
    total_n = sum(n * m for _, n, m in counts)
    init = np.array([0.0, logit((total_s + 1) / (total_n + 2))])
    return fit_grid(lambda q: _log_posterior(q, table), init, _HALF_WIDTH, _SPACING)


def _theta_quantile(post: GridPosterior, prob: float) -> float:
    span = post.scale * post.nodes
    lo, hi = post.offset.min() + span[0] - 1.0, post.offset.max() + span[-1] + 1.0
    return float(expit(brentq(lambda c: post.prob_last_below(c) - prob, lo, hi, xtol=1e-12)))


def clustered_interval(
    correct: Sequence[int] | np.ndarray, labels: Sequence[Hashable] | np.ndarray, alpha: float = 0.05
) -> tuple[float, float]:
    """Credible interval on the overall accuracy ``theta`` of one model with clustered questions.

    :param correct: 0/1 score per question.
    :param labels: cluster label per question (at least two distinct labels).
    :param alpha: one minus the credibility level.
    :returns: ``(lower, upper)``.

    Example::

        >>> lo, hi = clustered_interval([1, 1, 1, 0, 0, 0, 1, 1], list("aaabbbcc"))
        >>> 0.1 < lo < 0.5 < hi < 0.95
        True
    """
    alpha = check_alpha(alpha)
    post = _posterior_from_arrays(correct, labels)
    return _theta_quantile(post, alpha / 2), _theta_quantile(post, 1 - alpha / 2)


def clustered_intervals(
    df: pd.DataFrame, cluster: Any, alpha: float = 0.05
) -> pd.DataFrame:
    """Hierarchical Beta-Binomial credible intervals on each model's overall accuracy.

    :param df: rows = questions, columns = models (0/1), possibly a cluster column.
    :param cluster: the name of a cluster column of ``df``, a mapping from ``df``'s index to
        cluster labels, or a sequence with one label per row.
    :param alpha: one minus the credibility level.
    :returns: DataFrame with index ``["lower", "upper"]`` and one column per model.

    Example::

        >>> df = pd.DataFrame({"task": list("aabbcc"), "m": [1, 1, 0, 0, 1, 0]})
        >>> list(clustered_intervals(df, "task").index)
        ['lower', 'upper']
    """
    labels, exclude = cluster_labels(df, cluster)
    names, scores = binary_matrix(df, exclude=exclude)
    alpha = check_alpha(alpha)
    out = {}
    for j, name in enumerate(names):
        post = clustered_posterior(cluster_counts(scores[:, j], labels))
        out[name] = [_theta_quantile(post, alpha / 2), _theta_quantile(post, 1 - alpha / 2)]
    return pd.DataFrame(out, index=["lower", "upper"], columns=names)


def clustered_mean(
    correct: Sequence[int] | np.ndarray, labels: Sequence[Hashable] | np.ndarray
) -> float:
    """Posterior mean of the overall accuracy ``theta`` under the clustered model.

    Example::

        >>> 0.3 < clustered_mean(np.array([1, 1, 0, 0, 1, 0]), np.array(list("aabbcc"))) < 0.7
        True
    """
    return _posterior_from_arrays(correct, labels).expectation(lambda q: expit(q[:, 1]))


def _posterior_from_arrays(correct: Any, labels: Any) -> GridPosterior:
    """Validate one model's scores and cluster labels, then fit."""
    frame = pd.DataFrame({"correct": np.asarray(correct)})
    _, scores = binary_matrix(frame, name="correct")
    labels, _ = cluster_labels(frame, np.asarray(labels, dtype=object))
    return clustered_posterior(cluster_counts(scores[:, 0], labels))
