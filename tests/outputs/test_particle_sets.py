"""Joint draws from a vectorised run of several independent particle sets: each set's
weights, log P_hat and resampling match brute-force enumeration of that set's K^n
particle combinations."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_qem import AutoQEM, Inference
from pyro_qem.outputs import resample_run, sample_posterior
from pyro_qem.outputs.draws import MEASURED_FROM_SETS
from pyro_qem.outputs.sites import weighted_run

from tests.helpers.models import mixture

Y = torch.tensor([0.7, -1.2], dtype=torch.float64)
K, SETS = 3, 4


def model(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    with pyro.plate("j", 2):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def brute_force(run):
    """Per set: log P_hat and the joint probabilities of (mu index, theta indices)."""
    records = run.records
    mu = records["mu"].value.reshape(SETS, K)
    theta = records["theta"].value.reshape(SETS, K, 2)
    lq_mu = records["mu"].draw.log_q.reshape(SETS, K)
    lq_theta = records["theta"].draw.log_q.reshape(SETS, K, 2)
    log_p_hat, joint = [], []
    for r in range(SETS):
        logw = torch.empty(K, K, K, dtype=torch.float64)
        for a, b1, b2 in itertools.product(range(K), repeat=3):
            total = dist.Normal(0.0, 1.0).log_prob(mu[r, a]) - lq_mu[r, a]
            for j, b in enumerate((b1, b2)):
                total = total + (dist.Normal(mu[r, a], 1.0).log_prob(theta[r, b, j])
                                 - lq_theta[r, b, j] + dist.Normal(theta[r, b, j], 1.0).log_prob(Y[j]))
            logw[a, b1, b2] = total
        log_p_hat.append(logw.logsumexp(tuple(range(3))) - 3 * math.log(K))
        joint.append(torch.softmax(logw.reshape(-1), 0).reshape(K, K, K))
    return torch.stack(log_p_hat), torch.stack(joint)


@pytest.fixture(scope="module")
def sets_run():
    pyro.set_rng_seed(0)
    inference = Inference(model, AutoQEM(model), K=K)
    for _ in range(5):
        inference.step(Y)
    return weighted_run(inference, (Y,), {}, "test", weights=True, num_sets=SETS)


def test_each_set_is_contracted_on_its_own(sets_run):
    log_p_hat, joint = brute_force(sets_run)
    # The sets plate multiplies the sets' estimates: log P_hat is their sum.
    assert sets_run.log_p_hat == pytest.approx(log_p_hat.sum().item(), abs=1e-10)
    mu_group = sets_run.structure.group_of("mu").index
    weights = sets_run.weights[mu_group].reshape(SETS, K)
    assert torch.allclose(weights, joint.sum((2, 3)), atol=1e-12)


def test_each_set_is_resampled_from_its_own_joint_distribution(sets_run):
    _, joint = brute_force(sets_run)
    n = 20000
    draws = resample_run(sets_run, n)
    mu = sets_run.records["mu"].value.reshape(SETS, K)
    theta = sets_run.records["theta"].value.reshape(SETS, K, 2)
    drawn_mu = draws["mu"].reshape(n, SETS)
    drawn_theta = draws["theta"].reshape(n, SETS, 2)
    for r in range(SETS):
        a = (drawn_mu[:, r, None] == mu[r]).double().argmax(-1)
        b1 = (drawn_theta[:, r, 0, None] == theta[r, :, 0]).double().argmax(-1)
        counts = torch.zeros(K, K, dtype=torch.float64)
        counts.index_put_((a, b1), torch.ones(n, dtype=torch.float64), accumulate=True)
        exact = joint[r].sum(2)
        # Each cell's frequency within 5 binomial standard errors.
        stderr = (exact * (1 - exact) / n).sqrt()
        assert ((counts / n - exact).abs() <= 5 * stderr + 1e-9).all(), (r, counts / n, exact)


def test_sample_posterior_reports_draws_per_set_and_effective_draws():
    pyro.set_rng_seed(1)
    inference = Inference(model, AutoQEM(model), K=10)
    for _ in range(20):
        inference.step(Y)
    independent = sample_posterior(inference, Y, num_samples=50, draws_per_run=1)
    assert independent["theta"].shape == (50, 2)
    assert (independent.draws_per_set, independent.num_sets) == (1, 50)
    assert independent.effective_draws == 50
    auto = sample_posterior(inference, Y, num_samples=50)
    assert auto["mu"].shape == (50,)
    assert auto.num_sets == math.ceil(50 / auto.draws_per_set)
    # Few sets: Kish's formula, 1 + (n - 1) rho <= 1 + REPEAT_COST (= 2) by the rule.
    assert auto.num_sets < MEASURED_FROM_SETS and 0.5 * 50 <= auto.effective_draws <= 50
    assert auto.site_effective_draws == {}
    with pytest.raises(ValueError, match="draws_per_run must be a positive int"):
        sample_posterior(inference, Y, num_samples=5, draws_per_run=0)



def test_enumerated_labels_are_not_counted_as_repeated_particles():
    """Two draws from one set that give a point the same (certain) label are two exact
    draws of it; only the sampled group's weights decide the draws per set (before, a
    confident label's sum_k w_k^2 ~ 1 forced one draw, and one model run, per draw)."""
    y = torch.tensor([-4.0, -3.5, 3.0, 4.2, 3.6])
    pyro.set_rng_seed(3)
    inference = Inference(mixture, AutoQEM(mixture), K=30, lr=0.2)
    for _ in range(30):
        inference.step(y)
    run = weighted_run(inference, (y,), {}, "test")
    labels = run.weights[run.structure.group_of("c").index]
    assert (labels ** 2).sum(0).min() > 0.99  # the labels are certain
    draws = sample_posterior(inference, y, num_samples=60)
    assert draws.draws_per_set > 1 and draws.num_sets == math.ceil(60 / draws.draws_per_set)
    assert 0.5 * 60 <= draws.effective_draws <= 60
    assert (draws["c"] == torch.tensor([0, 0, 1, 1, 1])).all()


def test_a_model_with_only_enumerated_latents_draws_every_sample_from_one_run():
    locs = torch.tensor([-1.0, 1.0])

    def labels(y):
        with pyro.plate("data", len(y)):
            c = pyro.sample("c", dist.Categorical(torch.tensor([0.3, 0.7])),
                            infer={"enumerate": "parallel"})
            pyro.sample("obs", dist.Normal(locs[c], 1.0), obs=y)

    y = torch.tensor([-1.0, 0.2, 1.5])
    pyro.set_rng_seed(4)
    inference = Inference(labels, AutoQEM(labels), K=5)
    inference.step(y)
    n = 4000
    draws = sample_posterior(inference, y, num_samples=n)
    assert (draws.draws_per_set, draws.num_sets, draws.effective_draws) == (n, 1, n)
    exact = (torch.tensor([0.3, 0.7]).log() + dist.Normal(locs, 1.0).log_prob(y[:, None])).softmax(-1)[:, 1]
    se = (exact * (1 - exact) / n).sqrt()
    assert ((draws["c"].double().mean(0) - exact).abs() < 5 * se).all()

def fussy(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    if mu.dim() > 2:  # a model written for exactly one dim left of its plate
        raise RuntimeError("unexpected leading dims")
    with pyro.plate("j", 2):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_model_without_room_for_the_sets_dim_falls_back_to_one_run_per_set():
    pyro.set_rng_seed(2)
    inference = Inference(fussy, AutoQEM(fussy), K=5)
    inference.step(Y)
    with pytest.warns(RuntimeWarning, match="one set per model run"):
        draws = sample_posterior(inference, Y, num_samples=6, draws_per_run=1)
    assert draws["mu"].shape == (6,) and draws.num_sets == 6


LOCS = torch.tensor([-1.0, 1.5], dtype=torch.float64)
PRIOR_C = torch.tensor([0.4, 0.6], dtype=torch.float64)


def labelled(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    with pyro.plate("j", 2):
        c = pyro.sample("c", dist.Categorical(PRIOR_C), infer={"enumerate": "parallel"})
        z = pyro.sample("z", dist.Normal(mu + LOCS[c], 1.0))
        pyro.sample("y", dist.Normal(z, 1.0), obs=y)


def test_an_enumerated_site_in_a_plate_is_resampled_exactly_in_a_sets_run():
    """Pyro's SampleRing fails to join the indices drawn for an enumerated dim inside a
    plate with those drawn outside it when the sets' plate encloses both; the batched
    sampler draws every set from its own joint distribution (brute force over mu's
    index, each point's label and z's index)."""
    pyro.set_rng_seed(2)
    inference = Inference(labelled, AutoQEM(labelled), K=K)
    for _ in range(5):
        inference.step(Y)
    run = weighted_run(inference, (Y,), {}, "test", weights=False, num_sets=SETS)
    records = run.records
    mu = records["mu"].value.reshape(SETS, K)
    z = records["z"].value.reshape(SETS, K, 2)
    lq_mu = records["mu"].draw.log_q.reshape(SETS, K)
    lq_z = records["z"].draw.log_q.reshape(SETS, K, 2)
    n = 20000
    draws = resample_run(run, n)
    drawn_mu = draws["mu"].reshape(n, SETS)
    drawn_z = draws["z"].reshape(n, SETS, 2)
    drawn_c = draws["c"].reshape(n, SETS, 2)
    for r in range(SETS):
        # log weight of (mu index a, label c_j and z index b_j of each point j)
        logw = (dist.Normal(0.0, 1.0).log_prob(mu[r]) - lq_mu[r]).reshape(K, 1, 1, 1, 1)
        for j in range(2):
            per_point = (PRIOR_C.log().reshape(1, 2, 1)
                         + dist.Normal(mu[r].reshape(K, 1, 1) + LOCS.reshape(1, 2, 1), 1.0)
                         .log_prob(z[r, :, j].reshape(1, 1, K))
                         - lq_z[r, :, j] + dist.Normal(z[r, :, j], 1.0).log_prob(Y[j]))
            shape = (K, 2, K, 1, 1) if j == 0 else (K, 1, 1, 2, K)
            logw = logw + per_point.reshape(shape)
        exact = torch.softmax(logw.reshape(-1), 0).reshape(K, 2, K, 2, K).sum((3, 4))
        a = (drawn_mu[:, r, None] == mu[r]).double().argmax(-1)
        b = (drawn_z[:, r, 0, None] == z[r, :, 0]).double().argmax(-1)
        counts = torch.zeros(K, 2, K, dtype=torch.float64)
        counts.index_put_((a, drawn_c[:, r, 0], b), torch.ones(n, dtype=torch.float64),
                          accumulate=True)
        stderr = (exact * (1 - exact) / n).sqrt()
        assert ((counts / n - exact).abs() <= 5 * stderr + 1e-9).all(), (r, counts / n, exact)
    later = sample_posterior(inference, Y, num_samples=12, draws_per_run=1)
    assert later.num_sets == 12 and later["c"].shape == (12, 2)


# Degenerate weights are what this test needs (and the outputs warn of them).
@pytest.mark.filterwarnings("ignore::pyro_qem.QEMDiagnosticWarning")
def test_measured_effective_draws_match_the_spread_between_repeated_calls():
    """The batch-means design effect of draws taken 10 per set agrees with the variance
    of the draws' mean over 100 repeated calls (relative sd of that variance ~0.14)."""
    def normal_mean(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
        with pyro.plate("n", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = torch.tensor([1.0, 2.0, 1.5])
    pyro.set_rng_seed(5)
    # K = 5 after two steps: each set's weights repeat few particles.
    inference = Inference(normal_mean, AutoQEM(normal_mean), K=5)
    for _ in range(2):
        inference.step(y)
    n, means, reported, pooled = 400, [], [], []
    for _ in range(100):
        draws = sample_posterior(inference, y, num_samples=n, draws_per_run=10)
        assert draws.num_sets == 40 and set(draws.site_effective_draws) == {"mu"}
        means.append(draws["mu"].mean())
        reported.append(n / draws.effective_draws)
        pooled.append(draws["mu"])
    actual = torch.stack(means).var() / (torch.cat(pooled).var() / n)
    reported = sum(reported) / len(reported)
    assert reported > 1.5  # draws of one set are worth much less than independent ones
    assert 0.65 < actual / reported < 1.5, (actual, reported)


def test_stratified_draws_follow_the_weights_and_refuse_empty_rows():
    from pyro_qem.outputs.index_sampler import stratified_categorical

    torch.manual_seed(0)
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    drawn = stratified_categorical(probs.log(), num_draws=1000)
    assert drawn.shape == (1000, 2)
    # Stratified: an interval of the CDF of length p holds between 1000 p - 2 and
    # 1000 p + 2 of the 1000 strata's points (multinomial: sd ~15).
    for row in range(2):
        counts = torch.bincount(drawn[:, row], minlength=4).double()
        assert ((counts - 1000 * probs[row]).abs() < 2).all(), counts
    # A draws axis already in the batch: one draw per row, stratified along that axis.
    along = stratified_categorical(probs.log().expand(1000, 2, 4), draws_axis=0)
    assert torch.equal(torch.bincount(along[:, 1], minlength=4), torch.tensor([0, 0, 0, 1000]))
    with pytest.raises(ValueError, match="every particle of a particle set has zero"):
        stratified_categorical(torch.full((2, 3), -math.inf), num_draws=4)
    with pytest.raises(ValueError, match="NaN weight"):
        stratified_categorical(torch.tensor([[0.0, math.nan]]), num_draws=4)
