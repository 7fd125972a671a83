"""Synthetic indexed-group (hierarchical) regressions of any size, with known truth.

Real grouped data are ragged: a few groups hold most rows and many hold one or none
(the Minnesota radon counties run from 1 to 116 houses). :func:`make_hierarchical`
reproduces that shape with power-law group sizes at scales the bundled data sets do not
reach (millions of rows, tens of thousands of groups), and returns the parameter values
it simulated from so that inference can be checked against them.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

__all__ = ["make_hierarchical", "DEFAULT_TRUE_PARAMS"]

# Hyperparameters the data are simulated from unless overridden. The floor-like slope and
# the between-group scale are of the same order as in the radon data, so that neither the
# groups nor the covariate dominate the response.
DEFAULT_TRUE_PARAMS: Dict[str, float] = {
    "mu": 1.0,        # grand mean of the intercepts (of the supergroup means with 2 levels)
    "b": -0.7,        # slope of the covariate
    "sigma_a": 0.5,   # spread of group intercepts around their (super)group mean
    "sigma_s": 1.0,   # spread of supergroup means around mu (2 levels only)
    "sigma": 0.8,     # observation noise (family="normal" only)
}

_FAMILIES = ("normal", "bernoulli")


def _group_sizes(rng: np.random.Generator, num_groups: int, num_rows: int,
                 zipf_exponent: float, min_group_size: int) -> np.ndarray:
    """Power-law group sizes summing to ``num_rows``, each at least ``min_group_size``."""
    # The group of rank r gets a share proportional to r ** -exponent; ranks are shuffled
    # over the group ids so that group 0 is not always the largest.
    ranks = rng.permutation(num_groups) + 1.0
    weights = ranks ** -float(zipf_exponent)
    free = num_rows - min_group_size * num_groups
    # One multinomial draw: sizes sum exactly to num_rows, and the small groups come out
    # empty or of size 1 at random, as in real data, instead of being rounded away.
    return min_group_size + rng.multinomial(free, weights / weights.sum())


def make_hierarchical(
    num_groups: int,
    num_rows: int,
    *,
    zipf_exponent: float = 1.1,
    num_levels: int = 1,
    num_supergroups: Optional[int] = None,
    family: str = "normal",
    min_group_size: int = 0,
    true_params: Optional[Mapping[str, float]] = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Dict[str, Any]:
    r"""Simulate a varying-intercept regression with power-law group sizes.

    Generative model (``n`` a row, ``g`` a group, ``k`` a supergroup)::

        size of group g    ~ Multinomial(num_rows - G * min_group_size,
                                         p_g ∝ rank_g ** -zipf_exponent) + min_group_size
                             (rank_g a random permutation of 1..G)
        group[n]           = the rows' group ids, each g repeated size_g times, shuffled
        x[n]               ~ Normal(0, 1)

        num_levels == 1:   a[g] ~ Normal(mu, sigma_a)
        num_levels == 2:   supergroup[g] = a random balanced assignment of the G groups to
                                           K supergroups (each holds floor or ceil of G/K)
                           s[k] ~ Normal(mu, sigma_s)
                           a[g] ~ Normal(s[supergroup[g]], sigma_a)

        family "normal":     y[n] = a[group[n]] + b * x[n] + sigma * eps[n], eps ~ Normal(0, 1)
        family "bernoulli":  y[n] ~ Bernoulli(logits = a[group[n]] + b * x[n])

    Everything is drawn with one ``numpy.random.default_rng(seed)`` in a fixed order, so
    the same arguments give the same data on every machine; the work is vectorised (one
    multinomial, one permutation, a few normal draws), so a million rows in ten thousand
    groups take a fraction of a second.

    :param num_groups: number of groups ``G`` (>= 1).
    :param num_rows: number of rows ``N`` (>= ``G * min_group_size``).
    :param zipf_exponent: power of the group-size law (>= 0). Around 1 is heavy-tailed:
        with the default 1.1, the largest of 10,000 groups holds about 15% of the rows
        while the median group holds about 1/10,000 of the largest. 0 gives equal shares.
    :param num_levels: 1 (rows -> groups) or 2 (rows -> groups -> supergroups).
    :param num_supergroups: ``K`` for 2 levels, ``1 <= K <= G``; default
        ``round(sqrt(G))``. Ignored for 1 level.
    :param family: ``"normal"`` (linear regression) or ``"bernoulli"`` (logistic).
    :param min_group_size: every group gets at least this many rows (0 allows empty
        groups, which models must tolerate: an unobserved group's intercept is drawn
        from its prior only).
    :param true_params: overrides of :data:`DEFAULT_TRUE_PARAMS` (keys ``mu``, ``b``,
        ``sigma_a``, ``sigma_s``, ``sigma``).
    :param seed: seed of the random number generator.
    :param dtype: floating dtype of ``x``, ``y`` and the true values.
    :returns: a dict with

        - ``group`` (N,) ``torch.int64``: zero-based group of each row, ``0 .. G-1``.
        - ``x`` (N,): the covariate.
        - ``y`` (N,): the response (0./1. for ``"bernoulli"``).
        - ``group_size`` (G,) ``torch.int64``: rows per group (``bincount(group)``).
        - ``supergroup`` (G,) ``torch.int64``, 2 levels only: zero-based supergroup of
          each group, ``0 .. K-1``.
        - ``true``: dict of the values simulated from, as tensors: scalars ``mu``,
          ``b``, ``sigma_a`` (and ``sigma`` for ``"normal"``, ``sigma_s`` for 2 levels),
          ``a`` (G,) and, for 2 levels, ``s`` (K,).
    :raises ValueError: on an impossible combination of arguments.

    Example, a large two-level logistic data set and its model::

        >>> import pyro
        >>> import pyro.distributions as dist
        >>> from pyro_qem.datasets import make_hierarchical
        >>> data = make_hierarchical(1000, 100_000, num_levels=2, family="bernoulli")
        >>> data["group"].shape, data["supergroup"].shape, data["true"]["s"].shape
        (torch.Size([100000]), torch.Size([1000]), torch.Size([32]))
        >>> def model(data):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     b = pyro.sample("b", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("supergroups", 32):
        ...         s = pyro.sample("s", dist.Normal(mu, 1.0))
        ...     with pyro.plate("groups", 1000):
        ...         a = pyro.sample("a", dist.Normal(s[..., data["supergroup"]], 0.5))
        ...     with pyro.plate("rows", 100_000):
        ...         logits = a[..., data["group"]] + b * data["x"]
        ...         pyro.sample("y", dist.Bernoulli(logits=logits), obs=data["y"])
    """
    if num_groups < 1:
        raise ValueError(f"num_groups must be at least 1, got {num_groups}.")
    if min_group_size < 0:
        raise ValueError(f"min_group_size must be non-negative, got {min_group_size}.")
    if num_rows < min_group_size * num_groups:
        raise ValueError(f"num_rows={num_rows} is fewer than num_groups * min_group_size "
                         f"= {num_groups} * {min_group_size}.")
    if zipf_exponent < 0:
        raise ValueError(f"zipf_exponent must be non-negative, got {zipf_exponent}.")
    if num_levels not in (1, 2):
        raise ValueError(f"num_levels must be 1 or 2, got {num_levels}.")
    if family not in _FAMILIES:
        raise ValueError(f"family must be one of {_FAMILIES}, got '{family}'.")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}.")
    unknown = set(true_params or {}) - set(DEFAULT_TRUE_PARAMS)
    if unknown:
        raise ValueError(f"Unknown true_params {sorted(unknown)}; "
                         f"known: {sorted(DEFAULT_TRUE_PARAMS)}.")
    if num_levels == 2:
        num_supergroups = (max(1, int(round(num_groups ** 0.5))) if num_supergroups is None
                           else num_supergroups)
        if not 1 <= num_supergroups <= num_groups:
            raise ValueError(f"num_supergroups must lie in 1..num_groups={num_groups}, "
                             f"got {num_supergroups}.")
    theta = {**DEFAULT_TRUE_PARAMS, **(true_params or {})}
    rng = np.random.default_rng(seed)

    sizes = _group_sizes(rng, num_groups, num_rows, zipf_exponent, min_group_size)
    group = np.repeat(np.arange(num_groups, dtype=np.int64), sizes)
    # Rows arrive in random order, as in real data; a model must not rely on sorting.
    rng.shuffle(group)
    x = rng.standard_normal(num_rows)

    true: Dict[str, Any] = {"mu": theta["mu"], "b": theta["b"], "sigma_a": theta["sigma_a"]}
    out: Dict[str, Any] = {}
    if num_levels == 1:
        group_mean = np.full(num_groups, theta["mu"])
    else:
        # A balanced assignment keeps every supergroup non-empty, so that each s[k]
        # is informed by at least one group.
        supergroup = rng.permutation(np.arange(num_groups, dtype=np.int64) % num_supergroups)
        s = theta["mu"] + theta["sigma_s"] * rng.standard_normal(num_supergroups)
        group_mean = s[supergroup]
        true.update(sigma_s=theta["sigma_s"], s=s)
        out["supergroup"] = torch.from_numpy(supergroup)
    a = group_mean + theta["sigma_a"] * rng.standard_normal(num_groups)
    true["a"] = a

    eta = a[group] + theta["b"] * x
    if family == "normal":
        y = eta + theta["sigma"] * rng.standard_normal(num_rows)
        true["sigma"] = theta["sigma"]
    else:
        # Uniform < sigmoid(eta) is a Bernoulli draw; expit via tanh avoids overflow in exp.
        y = (rng.random(num_rows) < 0.5 * (1.0 + np.tanh(0.5 * eta))).astype(np.float64)

    out.update(
        group=torch.from_numpy(group),
        x=torch.as_tensor(x, dtype=dtype),
        y=torch.as_tensor(y, dtype=dtype),
        group_size=torch.from_numpy(np.asarray(sizes, dtype=np.int64)),
        true={k: torch.as_tensor(v, dtype=dtype) for k, v in true.items()},
    )
    return out
