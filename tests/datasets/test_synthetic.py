"""The synthetic hierarchical regressions: shapes, seeding, group sizes, and that the
data carry the true parameters they claim (no timing is tested)."""

import doctest

import numpy as np
import pytest
import torch

import pyro_qem.datasets.synthetic
from pyro_qem.datasets import DEFAULT_TRUE_PARAMS, make_hierarchical


def _np(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy() if t.is_floating_point() else t.numpy()


@pytest.mark.parametrize("family", ["normal", "bernoulli"])
@pytest.mark.parametrize("num_levels", [1, 2])
def test_shapes_and_dtypes(num_levels, family):
    data = make_hierarchical(50, 2000, num_levels=num_levels, family=family)
    assert data["group"].shape == data["x"].shape == data["y"].shape == (2000,)
    assert data["group"].dtype == data["group_size"].dtype == torch.int64
    assert data["x"].dtype == data["y"].dtype == torch.float32
    assert 0 <= data["group"].min() and data["group"].max() < 50
    assert torch.equal(data["group_size"], torch.bincount(data["group"], minlength=50))
    true = data["true"]
    expected = {"mu", "b", "sigma_a", "a"} | ({"sigma"} if family == "normal" else set())
    if num_levels == 2:
        expected |= {"sigma_s", "s"}
        assert data["supergroup"].shape == (50,) and data["supergroup"].dtype == torch.int64
        assert true["s"].shape == (7,)  # round(sqrt(50))
    else:
        assert "supergroup" not in data
    assert set(true) == expected and true["a"].shape == (50,)
    if family == "bernoulli":
        assert set(torch.unique(data["y"]).tolist()) <= {0.0, 1.0}


def test_dtype_and_true_params_are_honoured():
    data = make_hierarchical(10, 100, dtype=torch.float64, true_params={"b": 2.0})
    assert data["x"].dtype == data["y"].dtype == data["true"]["a"].dtype == torch.float64
    assert data["true"]["b"].item() == 2.0
    assert data["true"]["mu"].item() == DEFAULT_TRUE_PARAMS["mu"]


def test_same_seed_same_data_other_seed_other_data():
    def flat(d):
        return {**{k: v for k, v in d.items() if k != "true"}, **d["true"]}

    a, b = (flat(make_hierarchical(100, 5000, num_levels=2, seed=3)) for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = flat(make_hierarchical(100, 5000, num_levels=2, seed=4))
    assert not torch.equal(a["group"], c["group"]) and not torch.equal(a["y"], c["y"])


def test_group_sizes_are_heavy_tailed():
    sizes = make_hierarchical(10_000, 100_000)["group_size"]
    assert sizes.sum() == 100_000
    # A power law: one group dominates, the typical group is tiny, and some are empty.
    assert sizes.max() > 100 * max(sizes.median().item(), 1)
    assert sizes.max() > 0.05 * 100_000
    assert (sizes == 0).any() and (sizes == 1).any()


def test_min_group_size_and_uniform_sizes():
    sizes = make_hierarchical(1000, 20_000, min_group_size=5)["group_size"]
    assert sizes.min() >= 5 and sizes.sum() == 20_000
    # Exponent 0 gives equal shares: multinomial spread only (sd about sqrt(20) here).
    flat = make_hierarchical(1000, 20_000, zipf_exponent=0.0)["group_size"].double()
    assert flat.min() > 0 and flat.max() < 20 + 8 * 20 ** 0.5


def test_supergroups_are_balanced_and_non_empty():
    supergroup = make_hierarchical(103, 1000, num_levels=2, num_supergroups=10)["supergroup"]
    counts = torch.bincount(supergroup, minlength=10)
    assert len(counts) == 10 and counts.min() == 10 and counts.max() == 11


@pytest.mark.parametrize("kwargs", [
    dict(num_groups=0, num_rows=10),
    dict(num_groups=10, num_rows=10, min_group_size=2),
    dict(num_groups=10, num_rows=10, num_levels=3),
    dict(num_groups=10, num_rows=10, num_levels=2, num_supergroups=11),
    dict(num_groups=10, num_rows=10, family="poisson"),
    dict(num_groups=10, num_rows=10, zipf_exponent=-1.0),
    dict(num_groups=10, num_rows=10, dtype=torch.int64),
    dict(num_groups=10, num_rows=10, true_params={"tau": 1.0}),
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        make_hierarchical(**kwargs)


@pytest.mark.parametrize("num_levels", [1, 2])
def test_normal_recovers_the_truth(num_levels):
    data = make_hierarchical(1000, 100_000, num_levels=num_levels, seed=1)
    true = {k: _np(v) for k, v in data["true"].items()}
    group, x, y = _np(data["group"]), _np(data["x"]), _np(data["y"])
    n = np.bincount(group, minlength=1000)

    # Per-group means of y - b x estimate a[g] with standard error sigma / sqrt(n_g).
    big = n >= 100
    assert big.sum() >= 30
    mean = np.bincount(group, weights=y - true["b"] * x, minlength=1000)[big] / n[big]
    z = (mean - true["a"][big]) / (true["sigma"] / np.sqrt(n[big]))
    assert np.abs(z).max() < 5 and abs(np.mean(z ** 2) - 1) < 4 * np.sqrt(2 / big.sum())

    # Within-group least squares for b (group effects absorbed by demeaning).
    xc = x - (np.bincount(group, weights=x, minlength=1000) / np.maximum(n, 1))[group]
    yc = y - (np.bincount(group, weights=y, minlength=1000) / np.maximum(n, 1))[group]
    b_hat = (xc @ yc) / (xc @ xc)
    assert abs(b_hat - true["b"]) < 5 * true["sigma"] / np.sqrt(xc @ xc)

    # Noise scale from the true residuals.
    resid = y - true["a"][group] - true["b"] * x
    assert abs(resid.std() - true["sigma"]) < 5 * true["sigma"] / np.sqrt(2 * len(y))

    # The intercepts scatter as their prior says (around s[supergroup] for 2 levels).
    centre = true["s"][_np(data["supergroup"])] if num_levels == 2 else true["mu"]
    dev = true["a"] - centre
    assert abs(dev.mean()) < 5 * true["sigma_a"] / np.sqrt(1000)
    assert abs(dev.std() - true["sigma_a"]) < 5 * true["sigma_a"] / np.sqrt(2 * 1000)
    if num_levels == 2:
        s = true["s"]
        assert abs(s.mean() - true["mu"]) < 5 * true["sigma_s"] / np.sqrt(len(s))


def test_bernoulli_recovers_the_truth():
    data = make_hierarchical(500, 100_000, family="bernoulli", seed=2)
    true = {k: _np(v) for k, v in data["true"].items()}
    group, x, y = _np(data["group"]), _np(data["x"]), _np(data["y"])
    p = 1 / (1 + np.exp(-(true["a"][group] + true["b"] * x)))
    n = np.bincount(group, minlength=500)

    # At the true parameters the score has mean zero: per group (the a[g]) ...
    big = n >= 200
    assert big.sum() >= 20
    resid = np.bincount(group, weights=y - p, minlength=500)[big]
    var = np.bincount(group, weights=p * (1 - p), minlength=500)[big]
    z = resid / np.sqrt(var)
    assert np.abs(z).max() < 5 and abs(np.mean(z ** 2) - 1) < 4 * np.sqrt(2 / big.sum())
    # ... and for the slope b.
    assert abs((x * (y - p)).sum()) < 5 * np.sqrt((x ** 2 * p * (1 - p)).sum())


def test_docstring_examples_run():
    result = doctest.testmod(pyro_qem.datasets.synthetic)
    assert result.attempted > 0 and result.failed == 0
