import numpy as np
import pandas as pd
import pytest
from scipy.special import betainc, comb
from scipy.stats import beta, binomtest

from pyro_qem import evals

N_VALUES = [1, 3, 10, 30, 100]


def _frame(s, n):
    return pd.DataFrame({"m": [1] * s + [0] * (n - s)})


@pytest.mark.parametrize("n", N_VALUES)
@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_bayes_interval_is_beta_quantiles(n, alpha):
    for s in range(n + 1):
        lo, hi = evals.beta_interval(s, n, alpha, prior=(0.5, 2.0))
        ref = beta(s + 0.5, n - s + 2.0).ppf([alpha / 2, 1 - alpha / 2])
        np.testing.assert_allclose([lo, hi], ref, atol=1e-10, rtol=0)


def test_independent_intervals_frame_matches_beta():
    df = pd.DataFrame({"a": [1, 1, 0, 1, 1], "b": [0, 0, 0, 0, 0], "c": [True] * 5})
    out = evals.independent_intervals(df, alpha=0.1)
    assert list(out.index) == ["lower", "upper"] and list(out.columns) == ["a", "b", "c"]
    for col, s in zip("abc", (4, 0, 5)):
        np.testing.assert_allclose(out[col], beta(s + 1, 5 - s + 1).ppf([0.05, 0.95]), atol=1e-10)


@pytest.mark.parametrize("n", N_VALUES)
@pytest.mark.parametrize("method,scipy_name", [("wilson", "wilson"), ("clopper_pearson", "exact")])
def test_frequentist_intervals_match_scipy(n, method, scipy_name):
    fn = getattr(evals, f"{method}_interval")
    for s in range(n + 1):
        ci = binomtest(s, n).proportion_ci(confidence_level=0.95, method=scipy_name)
        np.testing.assert_allclose(fn(s, n, 0.05), [ci.low, ci.high], atol=1e-10, rtol=0)
    frame = getattr(evals, f"{method}_intervals")(_frame(2, max(n, 2)))
    assert frame.shape == (2, 1)


def test_clt_interval_degenerates_at_extremes():
    assert evals.clt_interval(0, 10) == (0.0, 0.0)
    lo, hi = evals.clt_interval(5, 10)
    np.testing.assert_allclose([lo, hi], 0.5 + np.array([-1, 1]) * 1.959963984540054 * np.sqrt(0.025))


def _average_coverage(method, n, alpha=0.05):
    """Exact coverage averaged over theta ~ U(0, 1): sum_S int_{I(S)} Binom(S; n, theta)."""
    s = np.arange(n + 1)
    lo, hi = method(s, np.full(n + 1, n), alpha)
    return float(np.sum((betainc(s + 1, n - s + 1, hi) - betainc(s + 1, n - s + 1, lo)) / (n + 1)))


def _fine_coverage(method, n, alpha=0.05, grid=200_001):
    """The same average by brute force: coverage at each theta on a fine grid."""
    theta = (np.arange(grid) + 0.5) / grid
    total = np.zeros_like(theta)
    for s in range(n + 1):
        lo, hi = method(s, n, alpha)
        total += np.where((theta >= lo) & (theta <= hi), comb(n, s) * theta**s * (1 - theta) ** (n - s), 0)
    return float(total.mean())


TABLE = {  # evals.md: average coverage over a uniform theta
    3: {"clt": 0.496, "wilson": 0.956, "cp": 0.995, "bayes": 0.950},
    10: {"clt": 0.769, "wilson": 0.954, "cp": 0.984, "bayes": 0.950},
    30: {"clt": 0.875, "wilson": 0.952, "cp": 0.973, "bayes": 0.950},
    100: {"clt": 0.922, "wilson": 0.951, "cp": 0.965, "bayes": 0.950},
}
METHODS = {
    "clt": evals.clt_interval,
    "wilson": evals.wilson_interval,
    "cp": evals.clopper_pearson_interval,
    "bayes": evals.beta_interval,
}


@pytest.mark.parametrize("n", sorted(TABLE))
def test_coverage_table(n):
    for name, method in METHODS.items():
        exact = _average_coverage(method, n)
        assert exact == pytest.approx(TABLE[n][name], abs=0.0015), name
        assert _fine_coverage(method, n) == pytest.approx(exact, abs=1e-4), name
    assert _average_coverage(evals.beta_interval, n) == pytest.approx(0.95, abs=1e-12)
    assert abs(_average_coverage(evals.wilson_interval, n) - 0.95) < 0.01
    assert _average_coverage(evals.clt_interval, n) < 0.94


def test_clt_at_fixed_theta_undercovers():
    n, theta = 10, 0.95
    s = np.arange(n + 1)
    lo, hi = evals.clt_interval(s, np.full(n + 1, n))
    pmf = comb(n, s) * theta**s * (1 - theta) ** (n - s)
    assert np.sum(pmf[(lo <= theta) & (theta <= hi)]) == pytest.approx(0.40, abs=0.01)


def test_interval_table_columns():
    table = evals.interval_table(pd.DataFrame({"a": [1, 0, 1, 1]}))
    assert table.loc["a", "correct"] == 3 and table.loc["a", "accuracy"] == 0.75
    assert {"bayes_lower", "wilson_upper", "clopper_pearson_lower", "clt_upper"} <= set(table.columns)


@pytest.mark.parametrize(
    "df,kwargs,error,match",
    [
        ([[0, 1]], {}, TypeError, "must be a pandas DataFrame"),
        (pd.DataFrame(), {}, ValueError, "is empty"),
        (pd.DataFrame({"a": [0, 2]}), {}, ValueError, r"Column 'a' .* non-binary values \[2.0\]"),
        (pd.DataFrame({"a": [0, None]}), {}, ValueError, "Column 'a' .* 1 missing value"),
        (pd.DataFrame({"a": ["x", "y"]}), {}, TypeError, "Column 'a' .* expected 0/1 scores"),
        (pd.DataFrame({"a": [0, 1]}), {"alpha": 1.5}, ValueError, r"`alpha` must be in \(0, 1\)"),
        (pd.DataFrame({"a": [0, 1]}), {"alpha": "0.05"}, TypeError, "`alpha` must be a number"),
        (pd.DataFrame({"a": [0, 1]}), {"prior": (1, 0)}, ValueError, "`prior` must be 2 positive"),
        (pd.DataFrame({"a": [0, 1]}), {"prior": None}, TypeError, "`prior` must be a sequence"),
    ],
)
def test_bad_input(df, kwargs, error, match):
    with pytest.raises(error, match=match):
        evals.independent_intervals(df, **kwargs)


def test_duplicate_columns_and_bad_counts():
    df = pd.DataFrame([[0, 1]], columns=["a", "a"])
    with pytest.raises(ValueError, match="duplicated column names"):
        evals.wilson_intervals(df)
    with pytest.raises(ValueError, match="0 <= successes <= trials"):
        evals.beta_interval(5, 3)
    with pytest.raises(ValueError, match="`successes` must hold whole numbers"):
        evals.wilson_interval(1.5, 3)
