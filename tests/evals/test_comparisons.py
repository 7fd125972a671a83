import numpy as np
import pandas as pd
import pytest
from scipy.special import betaln

from pyro_qem import evals
from pyro_qem.evals._bvn import bvn_upper
from pyro_qem.evals.paired import PairedTable, difference_cdf, prob_a_better

DF = pd.DataFrame(
    {
        "a": [1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1],
        "b": [1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 0],
        "c": [0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1],
    }
)


def _closed_form_prob_greater(a1, b1, a2, b2):
    """P(X > Y), X ~ Beta(a1, b1), Y ~ Beta(a2, b2), integer a1 (Evan Miller's sum)."""
    i = np.arange(a1)
    terms = np.exp(betaln(a2 + i, b1 + b2) - np.log(b1 + i) - betaln(1 + i, b1) - betaln(a2, b2))
    return terms.sum()


def test_independent_matches_closed_form_and_is_antisymmetric():
    out = evals.independent_comparisons(DF, prior=(1, 1))
    s, n = DF.sum(), len(DF)
    for i in "abc":
        assert np.isnan(out.loc[i, i])
        for j in "abc":
            if i != j:
                ref = _closed_form_prob_greater(s[i] + 1, n - s[i] + 1, s[j] + 1, n - s[j] + 1)
                assert out.loc[i, j] == pytest.approx(ref, abs=1e-10)
                assert out.loc[i, j] + out.loc[j, i] == 1.0


def test_independent_matches_two_dimensional_integration():
    out = evals.independent_comparisons(DF, prior=(0.5, 0.5))
    x = (np.arange(4000) + 0.5) / 4000
    s, n = DF.sum(), len(DF)
    dens = {k: np.exp((s[k] - 0.5) * np.log(x) + (n - s[k] - 0.5) * np.log1p(-x) - betaln(s[k] + 0.5, n - s[k] + 0.5)) / 4000 for k in "ab"}
    brute = (dens["a"][:, None] * dens["b"][None, :] * (x[:, None] > x[None, :])).sum()
    brute += 0.5 * (dens["a"] * dens["b"]).sum()
    assert out.loc["a", "b"] == pytest.approx(brute, abs=2e-4)


def test_monte_carlo_comparisons_are_seeded_and_complementary():
    one = evals.independent_comparisons(DF, num_samples=20_000, seed=5)
    two = evals.independent_comparisons(DF, num_samples=20_000, seed=np.random.default_rng(5))
    assert one.equals(two)
    np.testing.assert_allclose((one + one.T).to_numpy()[~np.eye(3, dtype=bool)], 1.0)
    np.testing.assert_allclose(one, evals.independent_comparisons(DF), atol=0.01)


def test_prob_best_and_ranks():
    best = evals.prob_best(DF)
    assert best.sum() == pytest.approx(1.0, abs=1e-9)
    mc = evals.prob_best(DF, num_samples=100_000, seed=0)
    np.testing.assert_allclose(best, mc, atol=0.01)
    ranks = evals.expected_ranks(DF)
    assert ranks.sum() == pytest.approx(6.0) and ranks.idxmin() == "a"


def test_independent_difference_and_odds_ratio_intervals():
    diff = evals.difference_interval(DF, "a", "b", alpha=0.1)
    s, n = DF.sum(), len(DF)
    rng = np.random.default_rng(0)
    xa = rng.beta(s["a"] + 1, n - s["a"] + 1, 400_000)
    xb = rng.beta(s["b"] + 1, n - s["b"] + 1, 400_000)
    np.testing.assert_allclose(diff[["median", "lower", "upper"]], np.quantile(xa - xb, [0.5, 0.05, 0.95]), atol=0.004)
    assert diff["p_a_better"] == pytest.approx(evals.independent_comparisons(DF).loc["a", "b"], abs=1e-10)
    ratio = evals.odds_ratio_interval(DF, "a", "b", alpha=0.1)
    ref = np.quantile(np.log(xa / (1 - xa)) - np.log(xb / (1 - xb)), [0.5, 0.05, 0.95])
    np.testing.assert_allclose(np.log(ratio[["median", "lower", "upper"]].astype(float)), ref, atol=0.02)


def _brute_force_paired(table, cut=None, nodes=64):
    """Nested Gauss-Legendre over (theta_A, theta_B, rho) in the original coordinates.

    Returns P(theta_A > theta_B) if ``cut`` is None, else P(theta_A - theta_B <= cut).
    """
    x, w = np.polynomial.legendre.leggauss(nodes)
    rho, wr = x, w * (1 + x) ** 3 * (1 - x)
    counts = table.counts

    def mass(lo_b, hi_b, lo_a, hi_a):
        tb = lo_b + (hi_b - lo_b) * (x + 1) / 2
        wb = w * (hi_b - lo_b) / 2
        la, ha = lo_a(tb), hi_a(tb)
        ta = la[:, None] + (ha - la)[:, None] * (x + 1) / 2  # (b, a)
        wa = (ha - la)[:, None] * w / 2
        TA, TB, R = np.broadcast_arrays(ta[:, :, None], tb[:, None, None], rho[None, None, :])
        from scipy.special import ndtri, xlogy

        p00 = bvn_upper(ndtri(TA), ndtri(TB), R)
        cells = [TA + TB + p00 - 1, 1 - TB - p00, 1 - TA - p00, p00]
        loglik = sum(xlogy(c, np.maximum(p, 1e-300)) for c, p in zip(counts, cells))
        return float(np.einsum("b,ba,r,bar->", wb, wa, wr, np.exp(loglik)))

    total = mass(0, 1, lambda t: 0 * t, lambda t: 1 + 0 * t)
    if cut is None:
        return mass(0, 1, lambda t: t, lambda t: 1 + 0 * t) / total
    pieces = sorted({0.0, 1.0, *[v for v in (-cut, 1 - cut) if 0 < v < 1]})
    below = 0.0
    for lo, hi in zip(pieces[:-1], pieces[1:]):
        if hi + cut > 0:
            below += mass(lo, hi, lambda t: 0 * t, lambda t: np.minimum(t + cut, 1.0))
    return below / total


@pytest.mark.parametrize("table", [PairedTable(5, 4, 1, 3), PairedTable(3, 1, 2, 4), PairedTable(6, 0, 2, 2)])
def test_paired_matches_brute_force_integration(table):
    assert prob_a_better(table) == pytest.approx(_brute_force_paired(table), abs=2e-5)
    for cut in (-0.1, 0.15):
        assert difference_cdf(table, cut) == pytest.approx(_brute_force_paired(table, cut), abs=2e-5)


def test_paired_comparisons_symmetry_and_correlation():
    out = evals.paired_comparisons(DF)
    np.testing.assert_allclose((out + out.T).to_numpy()[~np.eye(3, dtype=bool)], 1.0)
    assert prob_a_better(PairedTable(4, 3, 3, 2)) == pytest.approx(0.5, abs=1e-6)
    # b is correct only where a is: pairing makes the comparison more certain
    assert out.loc["a", "b"] > evals.independent_comparisons(DF).loc["a", "b"]


def test_paired_difference_and_odds_ratio_intervals():
    diff = evals.difference_interval(DF, "a", "b", paired=True)
    assert diff["lower"] < diff["median"] < diff["upper"]
    assert diff["p_a_better"] == pytest.approx(evals.paired_comparisons(DF).loc["a", "b"])
    ratio = evals.odds_ratio_interval(DF, "a", "b", paired=True)
    assert 1 < ratio["median"] and ratio["lower"] < ratio["median"] < ratio["upper"]


@pytest.mark.slow
def test_paired_interval_coverage_from_prior():
    rng = np.random.default_rng(2024)
    hits, reps, n = 0, 150, 100  # longer run: benchmarks/evals_coverage.py
    for _ in range(reps):
        ta, tb = rng.uniform(size=2)
        rho = 2 * rng.beta(4, 2) - 1
        from scipy.special import ndtri

        p00 = float(bvn_upper(ndtri(ta), ndtri(tb), rho))
        probs = np.clip([ta + tb + p00 - 1, 1 - tb - p00, 1 - ta - p00, p00], 0, None)
        counts = rng.multinomial(n, probs / probs.sum())
        table = PairedTable(*map(int, counts))
        lo = difference_cdf(table, ta - tb)
        hits += 0.025 < lo < 0.975
    assert abs(hits / reps - 0.95) < 0.02


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: evals.difference_interval(DF, "a", "z"), ValueError, "`model_b`='z' is not a model"),
        (lambda: evals.difference_interval(DF, "a", "a"), ValueError, "pick two models"),
        (lambda: evals.odds_ratio_interval(DF, "a", "b", paired=True, prior=(2, 2)), ValueError, "not supported with paired=True"),
        (lambda: evals.independent_comparisons(DF, num_samples=0), ValueError, "`num_samples` must be a positive integer"),
        (lambda: evals.prob_best(DF, num_samples=10, seed=1.5), TypeError, "`seed` must be None"),
        (lambda: evals.paired_comparisons(DF.assign(a=[2] * 12)), ValueError, "Column 'a'"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
