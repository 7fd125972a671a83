"""QEM across processes (gloo, 2-3 processes spawned on this machine).

Each scenario spawns its processes once; they write what they saw to files that the
test then compares with a single-process reference on the full data, built here with
the very particles the processes used (injected through the guide's particle hook).
"""

import datetime
import os
import socket
import time
import traceback
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.multiprocessing as mp

from pyro_qem import AutoQEM, Inference
from pyro_qem.estimator import estimate
from pyro_qem.infer.distributed import (
    DistributedError,
    ProcessGroup,
    check_shards,
    save_checkpoint,
    setup_guide,
)
from pyro_qem.infer.pipeline import run_particles
from pyro_qem.outputs import gather_local, posterior_moments, sample_posterior

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")

N, C, K = 12, 4, 3
COUNTY = torch.tensor([0, 0, 1, 2, 2, 0, 1, 1, 2, 0, 1, 2])  # county 3 has no houses


def data():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(N, generator=generator, dtype=torch.float64)


def plain_model(y, rows):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0))
    s = pyro.sample("s", dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), 0.5))
    with pyro.plate("data", N, subsample=rows):
        z = pyro.sample("z", dist.Normal(mu, s))
        pyro.sample("y", dist.Normal(z, 0.5), obs=y)


def indexed_model(y, rows):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0))
    with pyro.plate("county", C):
        a = pyro.sample("a", dist.Normal(mu, 1.0))
    with pyro.plate("house", N, subsample=rows):
        z = pyro.sample("z", dist.Normal(a[..., COUNTY[rows]], 0.5))
        pyro.sample("y", dist.Normal(z, 0.3), obs=y)


MODELS = {"plain": plain_model, "indexed": indexed_model}

# Rows of rank 1 (of 3) are precise, the others' noisy: from its own rows rank 1 would
# keep counties 0-2 centred, the others would standardise every county.
NOISE = torch.where(torch.arange(N) % 3 == 1, 0.01, 5.0).double()


def scale_model(y, rows):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(torch.tensor(1.0, dtype=torch.float64)))
    with pyro.plate("county", C):
        a = pyro.sample("a", dist.Normal(mu, sigma_a))
    with pyro.plate("house", N, subsample=rows):
        pyro.sample("y", dist.Normal(a[..., COUNTY[rows]], NOISE[rows]), obs=y)


# ---------------------------------------------------------------------- spawning


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, scenario, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=60))
    try:
        result = SCENARIOS[scenario](rank, world, out)
    except BaseException as error:  # reported to the test, which fails with it
        result = {"error": error, "traceback": traceback.format_exc()}
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    try:
        torch.distributed.destroy_process_group()
    except Exception:
        pass


def spawn(scenario, world, tmp_path):
    """Run ``SCENARIOS[scenario]`` on ``world`` processes; their results by rank (None
    for a process that exited without writing one)."""
    out = str(tmp_path / f"{scenario}-{world}")
    os.makedirs(out, exist_ok=True)
    mp.start_processes(_worker, args=(world, _free_port(), scenario, out), nprocs=world,
                       join=True, start_method="spawn")
    results = []
    for r in range(world):
        path = os.path.join(out, f"rank{r}.pt")
        results.append(torch.load(path, weights_only=False) if os.path.exists(path) else None)
    for r, result in enumerate(results):
        assert result is None or "error" not in result, f"rank {r}:\n{result['traceback']}"
    return results


def shard(rank, world):
    return torch.arange(rank, N, world)


# ---------------------------------------------------------------------- exactness


def reference_state(model):
    """A full-data guide's state: every process and the reference start from it."""
    pyro.set_rng_seed(1)
    guide = AutoQEM(model, noncentre=None)
    guide.setup(data(), torch.arange(N))
    return guide.state_dict()


def _exactness(rank, world, out):
    results = {}
    for name, model in MODELS.items():
        pyro.clear_param_store()
        state = reference_state(model)
        pyro.set_rng_seed(100 + rank)  # different streams: rank 0's particles must win
        guide = AutoQEM(model, noncentre=None)
        guide.load_state_dict(state)
        inference = Inference(model, guide, K=K, process_group=ProcessGroup(timeout=30))
        rows = shard(rank, world)
        run = inference._particle_run((data()[rows], rows), {})
        result = estimate(run.sites, run.structure, K, links=run.links, plate_reducers=run.plate_reducers)
        weights = result.weights()
        records = run.latent
        results[name] = {
            "rows": rows,
            "log_p_hat": result.log_p_hat.item(),
            "values": {n: r.value.detach() for n, r in records.items()},
            "weights": {n: weights[run.structure.group_of(n).index].detach() for n in records},
            "state": guide.state_dict()["state"],
        }
    return results


def _minibatch(rank, world, out):
    """Minibatches inside the shards: 2 rows of each process's shard."""
    pyro.clear_param_store()
    state = reference_state(plain_model)
    pyro.set_rng_seed(100 + rank)
    guide = AutoQEM(plain_model, noncentre=None)
    guide.load_state_dict(state)
    rows = shard(rank, world)
    inference = Inference(plain_model, guide, K=K, process_group=ProcessGroup(timeout=30, shard=rows))
    run = inference._particle_run((data()[rows[:2]], rows[:2]), {})
    result = estimate(run.sites, run.structure, K, plate_reducers=run.plate_reducers)
    weights = result.weights()
    return {"rows": rows[:2], "log_p_hat": result.log_p_hat.item(), "scales": result.plate_scales,
            "values": {n: r.value.detach() for n, r in run.latent.items()},
            "weights": {n: weights[run.structure.group_of(n).index].detach() for n in run.latent}}


def reference(model, values, rows=None):
    """log P_hat and weights of one process on the full data (or on ``rows`` of it, a
    minibatch) with ``values``."""
    pyro.clear_param_store()
    guide = AutoQEM(model, noncentre=None)
    guide.load_state_dict(reference_state(model))

    def inject(site, value, selection):
        return values[site.name].to(value)

    rows = torch.arange(N) if rows is None else rows
    setup_guide(guide, (data()[rows], rows), {})
    run = run_particles(model, guide, K, (data()[rows], rows), {}, particle_hook=inject)
    result = estimate(run.sites, run.structure, K, links=run.links)
    weights = result.weights()
    return result.log_p_hat.item(), {n: weights[run.structure.group_of(n).index] for n in run.latent}


def full_values(results, name):
    """The processes' particles: rank 0's of the global sites, and every process's rows
    of the local site z put back in place."""
    out = dict(results[0][name]["values"])
    z = out["z"]
    full = z.new_zeros(z.shape[:-1] + (N,))
    for r in results:
        full.index_copy_(z.dim() - 1, r[name]["rows"], r[name]["values"]["z"])
    out["z"] = full
    return out


def check_exactness(results):
    for name, model in MODELS.items():
        per_rank = [r[name] for r in results]
        # Every process weighs rank 0's particles of the global sites.
        for site in ("mu", "s", "a"):
            if site in per_rank[0]["values"]:
                for r in per_rank[1:]:
                    assert torch.equal(r["values"][site], per_rank[0]["values"][site]), (name, site)
        log_p_hat, weights = reference(model, full_values(results, name))
        for r in per_rank:
            assert abs(r["log_p_hat"] - log_p_hat) < 1e-10, (name, r["log_p_hat"], log_p_hat)
            for site in ("mu", "s", "a"):
                if site in r["weights"]:
                    assert (r["weights"][site] - weights[site]).abs().max() < 1e-10, (name, site)
            local = weights["z"].index_select(-1, r["rows"])
            assert (r["weights"]["z"] - local).abs().max() < 1e-10, name


# ---------------------------------------------------------------------- a fit

N_FIT, K_FIT, STEPS = 64, 30, 20
_g = torch.Generator().manual_seed(3)
Y_FIT = 1.0 + torch.randn(N_FIT, generator=_g, dtype=torch.float64) \
    + 0.5 * torch.randn(N_FIT, generator=_g, dtype=torch.float64)


def conjugate_model(y, rows):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0))
    with pyro.plate("data", N_FIT, subsample=rows):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(z, 0.5), obs=y)


def exact_mu():
    """Posterior mean and sd of mu: y_n ~ N(mu, 1 + 0.25) once z_n is integrated."""
    precision = 1 / 4 + N_FIT / 1.25
    return (Y_FIT.sum() / 1.25 / precision).item(), precision ** -0.5


def fit(rows, process_group=None, steps=STEPS, checkpoint=None, die_at=None, guide=None):
    guide = guide or AutoQEM(conjugate_model)
    inference = Inference(conjugate_model, guide, K=K_FIT, lr=0.5, average_from=10,
                          process_group=process_group)
    losses = []
    for step in range(steps):
        if die_at is not None and step == die_at:
            os._exit(0)  # a crash: no goodbye to the other processes
        losses.append(inference.step(Y_FIT[rows], rows))
        if checkpoint is not None and step == 4:
            save_checkpoint(inference, checkpoint)
    return inference, losses


def _fit(rank, world, out):
    pyro.set_rng_seed(7)
    rows = torch.arange(rank, N_FIT, world)
    inference, losses = fit(rows, ProcessGroup(timeout=30))
    q = inference.guide.distributions()["mu"]
    moments = posterior_moments(inference, Y_FIT[rows], rows, num_runs=2)
    draws = sample_posterior(inference, Y_FIT[rows], rows, num_samples=200)
    # An indexed-group fit: the county sites end every step the same on every rank.
    county = Inference(indexed_model, AutoQEM(indexed_model, prefix="county"), K=5, lr=0.5,
                       process_group=ProcessGroup(timeout=30))
    county_rows = shard(rank, world)
    county_losses = [county.step(data()[county_rows], county_rows) for _ in range(5)]
    county_state = {k: v for k, v in county.guide.state_dict()["state"].items()
                    if k.endswith(".a") or k.endswith(".mu")}
    # q of every row is valid on every rank (the other ranks' rows at their initial state).
    z_scale = inference.guide.distributions()["z"].scale
    return {"draws": draws, "gathered_draws": gather_local(inference, draws, leading=1),
            "county_losses": county_losses, "county_state": county_state,
            "z_scale_positive": bool((z_scale > 0).all()) and z_scale.shape == (N_FIT,),"rows": rows, "losses": losses, "mu": (q.loc.item(), q.scale.item()),
            "state": {k: v for k, v in inference.guide.state_dict()["state"].items() if k.endswith(".mu")},
            "moments": moments, "gathered": gather_local(inference, moments),
            "exactness": _exactness(rank, world, out)}


def _checkpoint_path(out):
    return os.path.join(os.path.dirname(out), "fit.ckpt")


def _failure(rank, world, out):
    pyro.set_rng_seed(7)
    rows = torch.arange(rank, N_FIT, world)
    start = time.time()
    try:
        fit(rows, ProcessGroup(timeout=5), checkpoint=_checkpoint_path(out),
            die_at=8 if rank == world - 1 else None)
    except DistributedError as error:
        return {"message": str(error), "seconds": time.time() - start}
    return {"message": None}


def _resume(rank, world, out):
    pyro.set_rng_seed(11)
    rows = torch.arange(rank, N_FIT, world)
    checkpoint = torch.load(_checkpoint_path(out), weights_only=False)
    guide = AutoQEM(conjugate_model)
    guide.load_state_dict(checkpoint)
    resumed = guide.state.num_updates()
    inference, losses = fit(rows, ProcessGroup(timeout=30), steps=5, guide=guide)
    return {"resumed_at": resumed, "num_updates": guide.state.num_updates(),
            "mu": {k: v for k, v in guide.state_dict()["state"].items() if k.endswith(".mu")}}


def _hang(rank, world, out):
    rows = torch.arange(rank, N_FIT, world)
    inference = Inference(conjugate_model, AutoQEM(conjugate_model), K=4,
                          process_group=ProcessGroup(timeout=2))
    inference.step(Y_FIT[rows], rows)
    if rank == 1:
        time.sleep(3.5)  # alive, but not taking part (past the 2 s timeout)
        return {}
    start = time.time()
    try:
        inference.step(Y_FIT[rows], rows)
    except DistributedError as error:
        return {"message": str(error), "seconds": time.time() - start}
    return {"message": None}


# ---------------------------------------------------------------------- bad input


def _bad_inputs(rank, world, out):
    """Each case fails at set-up on every process alike (so the group stays usable)."""
    y = data()
    cases = {
        "overlap": lambda rows: rows if rank != 2 else torch.arange(1, N, world),
        "missing": lambda rows: rows if rank != 2 else rows[:-1],
    }
    messages = {}
    for case, rows_of in cases.items():
        rows = rows_of(shard(rank, world))
        inference = Inference(plain_model, AutoQEM(plain_model), K=K, process_group=ProcessGroup(timeout=30))
        messages[case] = _error_of(lambda: inference.step(y[rows], rows))
    rows = shard(rank, world)
    declared = ProcessGroup(timeout=30, shard=rows)
    batch = rows[:2] if rank != 2 else shard(0, world)[:2]
    inference = Inference(plain_model, AutoQEM(plain_model), K=K, process_group=declared)
    messages["outside"] = _error_of(lambda: inference.step(y[batch], batch))
    inference = Inference(plain_model, AutoQEM(plain_model), K=3 if rank else 4,
                          process_group=ProcessGroup(timeout=30))
    messages["K"] = _error_of(lambda: inference.step(y[rows], rows))
    model = plain_model if rank else indexed_model
    inference = Inference(model, AutoQEM(model), K=K, process_group=ProcessGroup(timeout=30))
    messages["model"] = _error_of(lambda: inference.step(y[rows], rows))

    def fixed_scale(y, rows):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0))
        with pyro.plate("data", N, subsample=rows):
            pyro.sample("y", dist.Normal(mu, 0.5), obs=y)

    model = plain_model if rank else fixed_scale
    inference = Inference(model, AutoQEM(model), K=K, process_group=ProcessGroup(timeout=30))
    messages["globals"] = _error_of(lambda: inference.step(y[rows], rows))

    state = (COUNTY % 2)   # each county in one state: nested through the data only

    def nested(y, rows):
        with pyro.plate("state", 2):
            s = pyro.sample("s", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        with pyro.plate("county", C):
            c = pyro.sample("c", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
        with pyro.plate("house", N, subsample=rows):
            pyro.sample("y", dist.Normal(s[..., state[rows]] + c[..., COUNTY[rows]], 1.0), obs=y)

    inference = Inference(nested, AutoQEM(nested), K=K, process_group=ProcessGroup(timeout=30))
    messages["nested"] = _error_of(lambda: inference.step(y[rows], rows))

    def whole(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0))
        with pyro.plate("data", N):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    inference = Inference(whole, AutoQEM(whole), K=K, process_group=ProcessGroup(timeout=30))
    messages["unsharded"] = _error_of(lambda: inference.step(y))
    # Unequal shards: joint draws warn (or refuse clearly), never hang.
    rows = [torch.arange(0, 6), torch.arange(6, 9), torch.arange(9, 12)][rank]
    inference = Inference(plain_model, AutoQEM(plain_model, prefix="unequal"), K=K,
                          process_group=ProcessGroup(timeout=30))
    inference.step(y[rows], rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        messages["unequal"] = _error_of(lambda: sample_posterior(inference, y[rows], rows, num_samples=20))
    messages["unequal_warning"] = " ".join(str(w.message) for w in caught)
    # Which counties are proposed non-centred is rank 0's choice on every process.
    rows = shard(rank, world)
    guide = AutoQEM(scale_model, prefix="scales")
    inference = Inference(scale_model, guide, K=K, process_group=ProcessGroup(timeout=30))
    inference.step(y[rows], rows)
    plan = {k: None if v is None else v.tolist() for k, v in guide.noncentring_plan.items()}
    return {"messages": messages, "exactness": _exactness(rank, world, out),
            "minibatch": _minibatch(rank, world, out), "plan": plan}


def _error_of(call):
    try:
        call()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


SCENARIOS = {"fit": _fit, "failure": _failure, "resume": _resume, "hang": _hang,
             "bad_inputs": _bad_inputs}


# ---------------------------------------------------------------------- tests


def test_three_processes_exact_and_bad_inputs_fail_clearly(tmp_path):
    results = spawn("bad_inputs", 3, tmp_path)
    check_exactness([r["exactness"] for r in results])
    assert [r["plan"] for r in results] == [{"a": None}] * 3
    for r in results:
        messages = r["messages"]
        assert "overlap" in messages["overlap"] and "pyro.plate('data')" in messages["overlap"]
        assert "row 1 is held by rank 1 and rank 2" in messages["overlap"]
        assert "miss 1 rows" in messages["missing"] and "torch.arange(rank, N, world_size)" in messages["missing"]
        assert "differ in size ([3, 6])" in messages["unequal_warning"]
        assert messages["unequal"] is None or "different numbers of particle sets" in messages["unequal"]
        assert "rank(s) [2] subsampled rows of pyro.plate('data') outside the shard" in messages["outside"]
        assert messages["K"].startswith("DistributedError") and "rank 0: 4, rank 1: 3" in messages["K"]
        assert messages["model"].startswith("DistributedError") and "different models" in messages["model"]
        # Rank 0's model would propose 'a' non-centred (its loc reads mu), the others' none.
        assert "rank 0: a (4,); rank 1: none" in messages["model"]
        # The same non-centred proposals (none) but other sites: the set-up check.
        assert messages["globals"].startswith("DistributedError") and "different models" in messages["globals"]
        assert "rank 0: mu (group 0" in messages["globals"] and "s (group 1" in messages["globals"]
        assert messages["nested"].startswith("NotImplementedError")
        assert "pyro.plate('county') is nested in pyro.plate('state') only through" in messages["nested"]
        assert messages["unsharded"].startswith("ValueError") and "no pyro.plate" in messages["unsharded"]
        assert "subsample=rows" in messages["unsharded"]
    # Minibatches inside the shards: the plate's scale is N over every process's rows
    # (12 / 6), and the estimate is one process's on the union of the minibatches.
    minibatches = [r["minibatch"] for r in results]
    rows = torch.cat([m["rows"] for m in minibatches])
    values = dict(minibatches[0]["values"])
    values["z"] = torch.cat([m["values"]["z"] for m in minibatches], -1)
    log_p_hat, weights = reference(plain_model, values, rows)
    for m in minibatches:
        assert list(m["scales"].values()) == [2.0]
        assert abs(m["log_p_hat"] - log_p_hat) < 1e-10
        for site in ("mu", "s"):
            assert (m["weights"][site] - weights[site]).abs().max() < 1e-10


def test_two_processes_exact_fit_and_outputs(tmp_path):
    results = spawn("fit", 2, tmp_path)
    check_exactness([r["exactness"] for r in results])
    first, second = results
    # Every rank ends every step with the same global q, and the same log P_hat.
    assert first["losses"] == second["losses"]
    assert first["county_losses"] == second["county_losses"]
    for name in ("state", "county_state"):
        assert first[name] and first[name].keys() == second[name].keys()
        for key, value in first[name].items():
            assert torch.equal(value, second[name][key]), key
    # The fit is the exact posterior up to Monte Carlo error (single-process fits of
    # this set-up over 10 seeds: mean error 0.065 posterior sd, sd ratio 0.96-1.09),
    # as is the single-process fit from the same seed.
    mean, sd = exact_mu()
    pyro.clear_param_store()
    pyro.set_rng_seed(7)
    single, single_losses = fit(torch.arange(N_FIT))
    q = single.guide.distributions()["mu"]
    for loc, scale in (first["mu"], (q.loc.item(), q.scale.item())):
        assert abs(loc - mean) < 0.35 * sd
        assert 0.8 < scale / sd < 1.25
    assert abs(first["mu"][0] - q.loc.item()) < 0.5 * sd
    # The losses are full-data -log P_hat, of the same size as the single process's.
    assert abs(sum(first["losses"][-5:]) - sum(single_losses[-5:])) / 5 < 3.0
    # Outputs: global moments identical on every rank, local rows per rank, gathered.
    assert torch.equal(first["moments"]["mu"], second["moments"]["mu"])
    for r in results:
        assert r["z_scale_positive"]
        assert r["moments"]["z"].shape == (len(r["rows"]),)
        assert torch.equal(r["gathered"]["z"][r["rows"]], r["moments"]["z"])
        assert r["gathered"]["z"].shape == (N_FIT,)
    assert torch.equal(first["gathered"]["z"], second["gathered"]["z"])
    # Joint draws: the same global draws on every rank, from the full-data posterior.
    assert torch.equal(first["draws"]["mu"], second["draws"]["mu"])
    assert abs(first["draws"]["mu"].mean().item() - mean) < 0.5 * sd
    assert 0.75 < first["draws"]["mu"].std().item() / sd < 1.25
    for r in results:
        assert r["draws"]["z"].shape == (200, len(r["rows"]))
        assert torch.equal(r["gathered_draws"]["z"][:, r["rows"]], r["draws"]["z"])


def test_a_dead_process_fails_the_others_clearly_and_the_checkpoint_resumes(tmp_path):
    results = spawn("failure", 2, tmp_path)
    assert results[1] is None  # it died
    message = results[0]["message"]
    assert message is not None and "step 9" in message and "rank 0 of 2" in message
    assert "restart every process from the last checkpoint" in message
    assert results[0]["seconds"] < 30
    resumed = spawn("resume", 2, tmp_path)
    for r in resumed:
        assert r["resumed_at"] == 5 and r["num_updates"] == 10
    for key, value in resumed[0]["mu"].items():
        assert torch.equal(value, resumed[1]["mu"][key]), key
    # The checkpoint holds the whole fit: a single process on the full data resumes it.
    pyro.clear_param_store()
    guide = AutoQEM(conjugate_model)
    guide.load_state_dict(torch.load(tmp_path / "fit.ckpt", weights_only=False))
    fit(torch.arange(N_FIT), steps=2, guide=guide)
    assert guide.state.num_updates() == 7


def test_a_hung_process_times_out_with_a_clear_error(tmp_path):
    results = spawn("hang", 2, tmp_path)
    message = results[0]["message"]
    assert message is not None and "timeout=2" in message and "step 2" in message
    assert 1.5 < results[0]["seconds"] < 10


# ---------------------------------------------------------------------- in-process


def test_shards_must_be_disjoint_and_cover_the_plate():
    check_shards([torch.arange(0, 5), torch.arange(5, 10)], "data", 10)
    with pytest.raises(ValueError, match=r"overlap: row 4 is held by rank 0 and rank 1"):
        check_shards([torch.arange(0, 5), torch.arange(4, 10)], "data", 10)
    with pytest.raises(ValueError, match=r"miss 1 rows \(e.g. \[9\]\)"):
        check_shards([torch.arange(0, 5), torch.arange(5, 9)], "data", 10)
    with pytest.raises(ValueError, match=r"outside 0..9"):
        check_shards([torch.arange(0, 5), torch.arange(5, 11)], "data", 10)
    with pytest.raises(ValueError, match=r"row 3 appears 2 times in rank 0's rows"):
        check_shards([torch.tensor([0, 1, 2, 3, 3, 4]), torch.arange(5, 10)], "data", 10)
    with pytest.raises(ValueError, match=r"rank 1 has no rows"):
        check_shards([torch.arange(0, 10), torch.arange(0)], "data", 10)


def test_process_group_needs_an_initialised_torch_distributed():
    assert not torch.distributed.is_initialized()
    # (torch.distributed.group.WORLD is None until then, i.e. a single-process fit.)
    with pytest.raises(RuntimeError, match=r"torch.distributed is not initialised.*init_process_group"):
        Inference(plain_model, AutoQEM(plain_model), K=K, process_group="world")
    with pytest.raises(RuntimeError, match=r"not initialised"):
        ProcessGroup()
