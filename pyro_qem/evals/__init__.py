"""Honest error bars and comparisons for LLM benchmarks with few questions.

Call shapes follow the ``bayes_evals`` library, so ``from pyro_qem import evals`` can replace
``import bayes_evals``. Background and formulas: Bowyer, Aitchison and Ivanova, "Position:
Don't Use the CLT in LLM Evals With Fewer Than a Few Hundred Datapoints" (ICML 2025).

Example::

    >>> import pandas as pd
    >>> from pyro_qem import evals
    >>> df = pd.DataFrame({"a": [1, 1, 1, 0, 1], "b": [1, 0, 1, 0, 0]})
    >>> evals.independent_intervals(df).round(3)
               a      b
    lower  0.359  0.118
    upper  0.957  0.777
"""

from .clustered import clustered_interval, clustered_intervals, clustered_mean
from .comparisons import (
    difference_interval,
    expected_ranks,
    independent_comparisons,
    odds_ratio_interval,
    paired_comparisons,
    prob_best,
)
from .intervals import (
    beta_interval,
    clopper_pearson_interval,
    clopper_pearson_intervals,
    clt_interval,
    clt_intervals,
    independent_intervals,
    interval_table,
    wilson_interval,
    wilson_intervals,
)
from .metrics import confusion_counts, confusion_intervals, confusion_samples, f1_intervals
from .plotting import plot_comparisons, plot_intervals

__all__ = [
    "beta_interval",
    "clopper_pearson_interval",
    "clopper_pearson_intervals",
    "clt_interval",
    "clt_intervals",
    "clustered_interval",
    "clustered_intervals",
    "clustered_mean",
    "confusion_counts",
    "confusion_intervals",
    "confusion_samples",
    "difference_interval",
    "expected_ranks",
    "f1_intervals",
    "independent_comparisons",
    "independent_intervals",
    "interval_table",
    "odds_ratio_interval",
    "paired_comparisons",
    "plot_comparisons",
    "plot_intervals",
    "prob_best",
    "wilson_interval",
    "wilson_intervals",
]
