import numpy as np
import pytest
from scipy.stats import beta

from pyro_qem import evals

COUNTS = {"tp": 8, "fp": 2, "fn": 3, "tn": 1}


def test_confusion_counts():
    assert evals.confusion_counts([1, 1, 0, 0, 1], [1, 0, 1, 0, 1]) == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}


def test_exact_intervals_are_beta_quantiles():
    out = evals.confusion_intervals(COUNTS, alpha=0.1)
    np.testing.assert_allclose(out["precision"], beta(9, 3).ppf([0.5, 0.05, 0.95]), atol=1e-10)
    np.testing.assert_allclose(out["recall"], beta(9, 4).ppf([0.5, 0.05, 0.95]), atol=1e-10)
    x = beta(9, 7).ppf([0.5, 0.05, 0.95])
    np.testing.assert_allclose(out["f1"], 2 * x / (1 + x), atol=1e-10)


def test_exact_f1_matches_dirichlet_monte_carlo():
    draws = evals.confusion_samples(COUNTS, num_samples=200_000, seed=1)
    exact = evals.confusion_intervals(COUNTS)
    for metric in ("f1", "precision", "recall", "accuracy", "specificity"):
        mc = np.quantile(draws[metric], [0.5, 0.025, 0.975])
        np.testing.assert_allclose(exact[metric], mc, atol=0.006)


def test_samples_are_reproducible():
    a = evals.confusion_samples(COUNTS, 100, seed=np.random.default_rng(3))
    b = evals.confusion_samples(COUNTS, 100, seed=np.random.default_rng(3))
    assert a.equals(b)


def test_f1_from_labels():
    out = evals.f1_intervals([1, 1, 0, 0], [1, 0, 1, 0])
    assert out.loc["lower", "f1"] < out.loc["median", "f1"] < out.loc["upper", "f1"]


def test_bad_input():
    with pytest.raises(ValueError, match="`y_pred` has values \\[2\\]"):
        evals.confusion_counts([1, 0], [1, 2])
    with pytest.raises(ValueError, match="`y_true` has 2 entries but `y_pred` has 3"):
        evals.confusion_counts([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="`counts` must be a dict with keys"):
        evals.confusion_intervals({"tp": 1})
    with pytest.raises(ValueError, match="`prior` must be 1 positive"):
        evals.confusion_intervals(COUNTS, prior=0)
    with pytest.raises(TypeError, match="`seed` must be None, an int"):
        evals.confusion_samples(COUNTS, 10, seed="x")
