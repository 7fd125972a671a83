import numpy as np
import pandas as pd
import pytest
from scipy.integrate import quad
from scipy.special import betaln

from pyro_qem import evals
from pyro_qem.evals.clustered import cluster_counts, clustered_posterior

CORRECT = np.array([1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 1])
LABELS = np.array(list("aaabbbccddee"))


def _brute_force_cdf(correct, labels, cut):
    """P(theta <= cut) by nested adaptive quadrature over theta and d."""
    counts = cluster_counts(correct, labels)

    def joint(d, theta):
        a, b = d * theta, d * (1 - theta)
        return np.exp(sum(m * (betaln(a + s, b + n - s) - betaln(a, b)) for s, n, m in counts) - d)

    def inner(theta):
        return quad(joint, 0, np.inf, args=(theta,), epsabs=1e-13, limit=200)[0]

    def outer(lo, hi):
        return quad(inner, lo, hi, epsabs=1e-12, limit=200)[0]

    return outer(0, cut) / outer(0, 1)


def test_matches_brute_force_integration():
    lo, hi = evals.clustered_interval(CORRECT, LABELS, alpha=0.1)
    assert _brute_force_cdf(CORRECT, LABELS, lo) == pytest.approx(0.05, abs=1e-5)
    assert _brute_force_cdf(CORRECT, LABELS, hi) == pytest.approx(0.95, abs=1e-5)
    post = clustered_posterior(cluster_counts(CORRECT, LABELS))
    assert post.prob_last_below(0.0) == pytest.approx(_brute_force_cdf(CORRECT, LABELS, 0.5), abs=1e-6)


def test_frame_api_with_column_mapping_and_sequence():
    df = pd.DataFrame({"task": LABELS, "m": CORRECT, "n": 1 - CORRECT})
    by_column = evals.clustered_intervals(df, "task")
    assert list(by_column.columns) == ["m", "n"] and list(by_column.index) == ["lower", "upper"]
    by_mapping = evals.clustered_intervals(df[["m", "n"]], dict(zip(df.index, LABELS)))
    by_sequence = evals.clustered_intervals(df[["m", "n"]], list(LABELS))
    pd.testing.assert_frame_equal(by_column, by_mapping)
    pd.testing.assert_frame_equal(by_column, by_sequence)
    # clustering widens the interval relative to treating questions as IID
    iid = evals.independent_intervals(df[["m"]])
    assert (by_column.loc["upper", "m"] - by_column.loc["lower", "m"]) > (iid.loc["upper", "m"] - iid.loc["lower", "m"])


def test_mean_is_symmetric():
    assert evals.clustered_mean([1, 0, 1, 0], ["a", "a", "b", "b"]) == pytest.approx(0.5, abs=1e-9)


@pytest.mark.slow
def test_coverage_with_parameters_from_prior():
    rng = np.random.default_rng(7)
    hits, reps = 0, 400
    labels = np.repeat(np.arange(6), 5)
    for _ in range(reps):
        d, theta = rng.gamma(1.0), rng.uniform()
        theta_t = rng.beta(max(d * theta, 1e-300), max(d * (1 - theta), 1e-300), size=6)
        correct = (rng.uniform(size=30) < theta_t[labels]).astype(int)
        post = clustered_posterior(cluster_counts(correct, labels))
        cdf = post.prob_last_below(np.log(theta / (1 - theta)))
        hits += 0.025 < cdf < 0.975
    assert abs(hits / reps - 0.95) < 0.02


@pytest.mark.parametrize(
    "cluster,error,match",
    [
        ("nope", ValueError, "`cluster` column 'nope' is not in `df`"),
        (["a"] * 12, ValueError, "single cluster"),
        (["a"] * 11 + [None], ValueError, "1 missing label"),
        (["a", "b"], ValueError, r"`cluster` has shape \(2,\)"),
        ({0: "a"}, ValueError, "mapping has no entry for row"),
        (3.5, TypeError, "`cluster` must be a column name"),
    ],
)
def test_bad_cluster_input(cluster, error, match):
    df = pd.DataFrame({"m": CORRECT})
    with pytest.raises(error, match=match):
        evals.clustered_intervals(df, cluster)
