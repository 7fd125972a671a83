"""Contracting a plate in chunks (a memory budget smaller than the contraction's peak)
gives the whole contraction's ``log P_hat`` and weights, to 1e-10 in float64; a budget
that even one element per chunk exceeds is refused, saying why."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_qem import AutoQEM, Inference
from pyro_qem.estimator import contraction, estimate
from pyro_qem.estimator.contraction import Chunking, chunk_bounds, chunk_obstacle
from pyro_qem.estimator.estimate import local_dims
from pyro_qem.estimator.linked import contract_terms
from pyro_qem.estimator.memory import (
    PLAN_FRACTION,
    MemoryBudgetError,
    _PeakTracker,
    held_bytes,
    plan_contraction,
    simulate_contraction,
)

F64 = torch.float64


def zero():
    return torch.zeros((), dtype=F64)


def three_globals(y, subsample_size=None):
    """A local latent shared by three observations, each also reading its own global:
    the plate's contraction builds a K x K x K x N term from K x K x N factors."""
    zs = [pyro.sample(f"z{i}", dist.Normal(zero(), 1.0)) for i in range(3)]
    with pyro.plate("data", y.shape[0], subsample_size=subsample_size) as rows:
        a = pyro.sample("a", dist.Normal(zero(), 1.0))
        for i, z in enumerate(zs):
            pyro.sample(f"y{i}", dist.Normal(z + a, 1.0), obs=y[rows, i])


def pair(y):
    """Two latents of one plate element, in two groups, read by one observation."""
    z = pyro.sample("z", dist.Normal(zero(), 1.0))
    with pyro.plate("data", len(y)):
        a = pyro.sample("a", dist.Normal(z, 1.0))
        b = pyro.sample("b", dist.Normal(z, 1.0))
        pyro.sample("y", dist.Normal(a * b, 1.0), obs=y)


def nested(y):
    """Students inside schools: y has shape (schools, students)."""
    mu = pyro.sample("mu", dist.Normal(zero(), 1.0))
    tau = pyro.sample("tau", dist.Normal(zero(), 1.0))
    with pyro.plate("school", y.shape[0], dim=-2):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        with pyro.plate("student", y.shape[1], dim=-1):
            u = pyro.sample("u", dist.Normal(theta, 1.0))
            pyro.sample("y", dist.Normal(u + tau, 1.0), obs=y)


COUNTY = torch.tensor([0, 0, 1, 2, 2, 2, 4, 1, 0])  # county 3 has no houses


def indexed(y, county):
    """Houses read their county's latent through an index (folded into 'county')."""
    mu = pyro.sample("mu", dist.Normal(zero(), 2.0))
    with pyro.plate("county", 5):
        a = pyro.sample("a", dist.Normal(mu, 1.0))
    with pyro.plate("house", len(y)):
        z = pyro.sample("z", dist.Normal(a[..., county], 0.5))
        pyro.sample("y", dist.Normal(z, 0.3), obs=y)


PAIRS = [(i, j) for i in range(4) for j in range(i + 1, 4)]


def clique(y):
    """Four globals, each pair read by an observation: summing out any one of them
    leaves a K x K x K intermediate, in no plate."""
    z = [pyro.sample(f"z{i}", dist.Normal(zero(), 1.0)) for i in range(4)]
    for n, (i, j) in enumerate(PAIRS):
        pyro.sample(f"y{i}{j}", dist.Normal(z[i] - z[j], 1.0), obs=y[n])
    with pyro.plate("data", 3):
        pyro.sample("x", dist.Normal(z[0], 1.0), obs=y[:3])


def data(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if model is three_globals:
        return (torch.randn(30, 3, generator=gen, dtype=F64),)
    if model is pair:
        return (torch.randn(25, generator=gen, dtype=F64),)
    if model is nested:
        return (torch.randn(4, 6, generator=gen, dtype=F64),)
    if model is indexed:
        return torch.randn(len(COUNTY), generator=gen, dtype=F64), COUNTY
    return (torch.randn(len(PAIRS), generator=gen, dtype=F64),)


def particle_terms(model, args, K=4, seed=0, **kwargs):
    """One particle run's packed terms (factors and source terms) and what the
    contraction needs besides them."""
    pyro.set_rng_seed(seed)
    inference = Inference(model, AutoQEM(model), K=K)
    run = inference.run_particles(*args, **kwargs)
    result = estimate(run.sites, run.structure, K, links=run.links, contract=False)
    terms = result.factors + [s.factor for s in result.sources]
    locals_ = local_dims(run.structure) if result.links else None
    return run, result, terms, locals_


def contract_and_weigh(result, terms, locals_, chunking=None, reducers=()):
    log_p_hat = contract_terms(terms, result.plate_scales, dict(reducers), result.links, locals_,
                               chunking)
    grads = torch.autograd.grad(log_p_hat, [s.tensor for s in result.sources])
    return log_p_hat.detach(), result.weights(grads)


def assert_same(whole, chunked):
    (log_p, weights), (log_p_chunked, weights_chunked) = whole, chunked
    assert abs(log_p.item() - log_p_chunked.item()) < 1e-10
    assert weights.keys() == weights_chunked.keys()
    for group in weights:
        assert torch.allclose(weights[group], weights_chunked[group], rtol=0, atol=1e-10), group


@pytest.mark.parametrize("model, plate", [
    (three_globals, "data"), (pair, "data"), (nested, "school"), (nested, "student"),
    (indexed, "county"),
])
def test_every_chunk_count_gives_the_whole_contraction(model, plate):
    run, result, terms, locals_ = particle_terms(model, data(model))
    symbol = run.structure.symbols.plate[plate]
    whole = contract_and_weigh(result, terms, locals_)
    assert torch.isfinite(whole[0])
    size = run.structure.plates[plate].size
    for count in sorted({2, 3, size}):  # uneven chunks, and one element per chunk
        assert_same(whole, contract_and_weigh(result, terms, locals_, Chunking(symbol, count)))


def test_a_subsampled_plate_scales_the_chunks_total_once():
    y, = data(three_globals)
    run, result, terms, locals_ = particle_terms(three_globals, (y,), subsample_size=12)
    symbol = run.structure.symbols.plate["data"]
    assert result.plate_scales == {symbol: 30 / 12}
    whole = contract_and_weigh(result, terms, locals_)
    assert_same(whole, contract_and_weigh(result, terms, locals_, Chunking(symbol, 5)))


def test_a_sharded_plate_s_reducer_is_called_once_on_the_chunks_total():
    y, = data(three_globals)
    run, result, terms, locals_ = particle_terms(three_globals, (y,))
    symbol = run.structure.symbols.plate["data"]
    calls = []

    def reduce(x):  # as if another process held the same rows
        calls.append(tuple(x.shape))
        return x + x.detach()

    whole = contract_and_weigh(result, terms, locals_, reducers={symbol: reduce})
    chunked = contract_and_weigh(result, terms, locals_, Chunking(symbol, 4), {symbol: reduce})
    assert_same(whole, chunked)
    assert len(calls) == 2


def test_chunk_bounds_cover_the_plate():
    assert chunk_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert chunk_bounds(2, 5) == [(0, 1), (1, 2)]


def test_plates_that_cannot_be_chunked_say_why():
    run, result, terms, _ = particle_terms(nested, data(nested))
    symbol = run.structure.symbols.plate["student"]
    assert chunk_obstacle(terms, symbol, {symbol: lambda x: x}) is None
    school = run.structure.symbols.plate["school"]
    assert "split across processes" in chunk_obstacle(terms, school, {symbol: lambda x: x})
    with pytest.raises(ValueError, match="cannot be contracted in chunks"):
        contract_terms(terms, {}, {symbol: lambda x: x}, chunking=Chunking(school, 2))


def budget_between(terms, result, locals_, symbol, count):
    """A budget that ``count`` chunks of plate ``symbol`` fit and the whole contraction
    does not."""
    held = held_bytes(terms)
    args = (terms, result.plate_scales, {}, result.links, locals_)
    chunked = simulate_contraction(*args, chunking=Chunking(symbol, count)).peak
    whole = simulate_contraction(*args).peak
    assert chunked < whole
    return (held + chunked) / PLAN_FRACTION


@pytest.mark.parametrize("model, plate", [
    (three_globals, "data"), (pair, "data"), (nested, "student"), (indexed, "county"),
])
def test_a_budget_below_the_whole_contraction_chunks_it_with_the_same_answer(model, plate):
    args = data(model)
    run, result, terms, locals_ = particle_terms(model, args)
    symbol = run.structure.symbols.plate[plate]
    budget = budget_between(terms, result, locals_, symbol, 3)
    chunking = plan_contraction(terms, result.plate_scales, {}, budget, result.links, locals_)
    assert chunking is not None and chunking.num_chunks > 1
    whole = estimate(run.sites, run.structure, 4, links=run.links)
    chunked = estimate(run.sites, run.structure, 4, links=run.links, max_memory=budget)
    assert_same((whole.log_p_hat.detach(), whole.weights()),
                (chunked.log_p_hat.detach(), chunked.weights()))


def test_the_chunked_contraction_stays_within_the_budget_it_was_planned_for():
    """Measured on real tensors: the bytes alive beyond the factors, backward pass
    included, with every storage counted until freed."""
    y = torch.randn(200, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    run, result, terms, locals_ = particle_terms(three_globals, (y,), K=10)
    held = held_bytes(terms)
    budget = held + 2 ** 20
    chunking = plan_contraction(terms, result.plate_scales, {}, budget)
    assert chunking is not None
    peaks = {}
    for name, plan in (("whole", None), ("chunked", chunking)):
        tracker = _PeakTracker([t.tensor.untyped_storage()._cdata for t in terms])
        with tracker:
            contract_and_weigh(result, terms, locals_, plan)
        peaks[name] = tracker.peak
    assert held + peaks["whole"] > 4 * budget
    assert held + peaks["chunked"] <= budget


def test_an_intermediate_outside_every_plate_is_refused_naming_it():
    run, result, terms, locals_ = particle_terms(clique, data(clique), K=20)
    budget = held_bytes(terms) + 10_000
    with pytest.raises(MemoryBudgetError) as error:
        estimate(run.sites, run.structure, 20, max_memory=budget)
    message = str(error.value)
    assert "largest intermediate has shape (20, 20, 20)" in message
    assert "Chunking cannot help" in message and "plate 'data'" in message
    assert "has no dim of the plate" in message and "smaller K" in message


def test_a_model_without_plates_is_refused_saying_so():
    def globals_only(y):
        z = [pyro.sample(f"z{i}", dist.Normal(zero(), 1.0)) for i in range(4)]
        for n, (i, j) in enumerate(PAIRS):
            pyro.sample(f"y{i}{j}", dist.Normal(z[i] - z[j], 1.0), obs=y[n])

    run, result, terms, _ = particle_terms(globals_only, data(clique), K=20)
    with pytest.raises(MemoryBudgetError, match=r"no plate of the contraction can be chunked "
                                                r"\(the model has no plate\)"):
        estimate(run.sites, run.structure, 20, max_memory=held_bytes(terms) + 10_000)


def fit(model, args, max_memory, steps=3):
    pyro.clear_param_store()
    pyro.set_rng_seed(7)
    guide = AutoQEM(model)
    inference = Inference(model, guide, K=10, lr=0.5, max_memory=max_memory)
    losses = [inference.step(*args) for _ in range(steps)]
    state = guide.state.state_dict()
    return losses, {name: value.detach().clone() for name, value in state.items()}


def test_a_fit_under_a_small_budget_is_the_unchunked_fit_step_for_step(monkeypatch):
    y = torch.randn(200, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    terms = particle_terms(three_globals, (y,), K=10)[2]
    budget = held_bytes(terms) + 2 ** 21  # the whole contraction needs ~12 MiB more
    losses, state = fit(three_globals, (y,), None)
    chunked_calls = []  # the real contractions in chunks (not the planner's simulations)
    chunked = contraction._chunked_log_marginal

    def counted(factors, *args):
        if factors[0].tensor.device.type != "meta":
            chunked_calls.append(args[-1])
        return chunked(factors, *args)

    monkeypatch.setattr(contraction, "_chunked_log_marginal", counted)
    losses_chunked, state_chunked = fit(three_globals, (y,), budget)
    assert len(chunked_calls) == 3 and chunked_calls[0].num_chunks > 1
    assert all(abs(a - b) < 1e-10 for a, b in zip(losses, losses_chunked))
    for name in state:
        assert torch.allclose(state[name], state_chunked[name], rtol=0, atol=1e-10), name
