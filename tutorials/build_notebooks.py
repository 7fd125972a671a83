"""Write the tutorial notebooks from their cell sources and execute them in place.

    python tutorials/build_notebooks.py                  # all of them
    python tutorials/build_notebooks.py 06_llm_evals     # only those named

Keeping the sources here makes the notebooks reviewable as code; the test suite
executes the notebooks themselves (tests/test_tutorials.py), and the documentation
renders their stored outputs (docs/, ``make docs``). Prose in a notebook states no number
that the notebook does not compute: numbers appear in outputs only.
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).parent

QUICKSTART = [
    ("markdown", """# QEM quickstart: eight schools

This notebook fits the classic eight-schools hierarchy with `pyro_qem`, looks at the
posterior through its outputs and ArviZ, and runs Pyro's own SVI on the same model side by
side. It takes well under a minute on a laptop CPU."""),
    ("code", """import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

import time

import arviz as az
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_qem import AutoQEM, Inference, sample_guide, sample_posterior, to_inference_data

%matplotlib inline
torch.set_num_threads(1)
pyro.set_rng_seed(0)

y = torch.tensor([28., 8., -3., 7., -1., 1., 18., 12.])
sigma = torch.tensor([15., 10., 16., 11., 9., 11., 10., 18.])"""),
    ("markdown", """## The model: an ordinary Pyro model

Non-centred parameterisation: `theta = mu + tau * z`. Nothing in it knows about QEM."""),
    ("code", """def model(sigma, y=None):
    mu = pyro.sample("mu", dist.Normal(0., 5.))
    tau = pyro.sample("tau", dist.HalfCauchy(5.))
    with pyro.plate("school", len(sigma)):
        z = pyro.sample("z", dist.Normal(0., 1.))
        theta = pyro.deterministic("theta", mu + tau * z)
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)"""),
    ("markdown", """## Fit with QEM

`AutoQEM` picks a Normal q for `mu` and `z` and a Gamma q for the positive `tau`. Grouping
`mu` and `tau` makes particle k of each be used together. `average_from` keeps the running
average of the later iterates, which removes the Monte Carlo noise of a fixed `lr`."""),
    ("code", """guide = AutoQEM(model, groups=[["mu", "tau"]])
inference = Inference(model, guide, K=30, lr=0.1, average_from=200)
start = time.perf_counter()
history = inference.fit(sigma, y, num_steps=400, progress_bar=False)
print(f"QEM: {time.perf_counter() - start:.1f} s, final -log P_hat {history.losses[-1]:.2f}")
for name, q in guide.distributions().items():
    print(name, q.mean.numpy().round(2), q.stddev.numpy().round(2))"""),
    ("code", """ax = history.plot()"""),
    ("markdown", """## Posterior outputs

`sample_posterior` draws particle indices jointly (walking the contraction in reverse), so
`theta = mu + tau * z` keeps the coupling between `mu`, `tau` and `z` that the mean-field q
lacks. Independent draws from q make theta too wide."""),
    ("code", """joint = sample_posterior(inference, sigma, y, num_samples=300)
independent = sample_guide(guide, 2000)
theta_joint = joint["mu"][:, None] + joint["tau"][:, None] * joint["z"]
theta_indep = independent["mu"][:, None] + independent["tau"][:, None] * independent["z"]
print("theta sd, joint draws:      ", theta_joint.std(0).numpy().round(1))
print("theta sd, independent draws:", theta_indep.std(0).numpy().round(1))"""),
    ("markdown", """## ArviZ

`to_inference_data` returns an `InferenceData` with posterior, posterior predictive,
pointwise log-likelihood (so `az.loo` works), observed data and the loss history."""),
    ("code", """with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    idata = to_inference_data(inference, sigma, y, num_samples=300, history=history)
    print(az.summary(idata, var_names=["mu", "tau"], kind="stats"))
    print(az.loo(idata))"""),
    ("markdown", """## The same model with Pyro's SVI

`AutoNormal` + `Trace_ELBO` + Adam, what a Pyro user would run today."""),
    ("code", """pyro.clear_param_store()
svi_guide = AutoNormal(model)
svi = SVI(model, svi_guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
start = time.perf_counter()
for step in range(2000):
    svi.step(sigma, y)
print(f"SVI: {time.perf_counter() - start:.1f} s")
print({k: v.detach().numpy().round(2) for k, v in svi_guide.median(sigma, y).items()})"""),
]


RADON_INDEXED = [
    ("markdown", """# Radon in Minnesota: a hierarchical regression with indexed groups

The classic varying-intercept model of Gelman and Hill: log radon measured in 919
Minnesota houses, in 85 counties of very different sizes. Each house's county is an
integer column, and the county intercept is looked up with `a[..., county]`, the way the
model is written in Pyro, NumPyro, Stan or PyMC. `pyro_qem` needs no annotation for this:
it sees that the county latent is indexed by a column as long as the house plate and
treats the houses as nested in their counties (see "Indexed groups" in the README).

The notebook

1. fits the model with QEM, with Pyro's SVI (`AutoNormal`, `Trace_ELBO`, Adam), and
   compares both to NUTS (a cached reference, see below);
2. goes through the outputs on an indexed model: joint draws, posterior moments, ArviZ
   (`az.loo`, `az.plot_ppc`), and held-out prediction for counties the fit never saw;
3. runs the diagnostics and explains their warning;
4. fits a varying-slopes variant with the same code.

To stay within a minute on two CPU cores, the fits are shorter than the README's
600-step setting (the step counts are printed with each fit). Every number quoted is
computed by the notebook; the prose only says where to look."""),
    ("code", """import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

import json
import time
from pathlib import Path

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_qem
from pyro_qem import AutoQEM, Inference
from pyro_qem.datasets import load_radon_mn

%matplotlib inline
torch.set_num_threads(1)
pyro.set_rng_seed(0)

data = load_radon_mn(torch.float64)
floor, county, log_radon = data["floor"], data["county"], data["log_radon"]
NUM_COUNTIES = len(data["county_log_uranium"])
sizes = torch.bincount(county, minlength=NUM_COUNTIES)
labels = [f"county {c}" for c in range(NUM_COUNTIES)]
print(f"{len(log_radon)} houses in {NUM_COUNTIES} counties; houses per county: min {sizes.min()}, "
      f"median {sizes.median()}, max {sizes.max()}; {int((sizes <= 2).sum())} counties have at most 2")"""),
    ("markdown", """## The model, written the usual way

One row per house. `a` lives in the county plate; the house plate reads each house's
intercept with `a[..., county]` (the `...` keeps any batch dims that inference puts in
front, such as QEM's particle dims). The prior constants are float64 tensors, so the whole
model runs in float64 like the data."""),
    ("code", """ZERO, ONE = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)


def model(floor, county, y=None):
    mu = pyro.sample("mu", dist.Normal(ZERO, 5 * ONE))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(ONE))
    with pyro.plate("county", NUM_COUNTIES):
        a = pyro.sample("a", dist.Normal(mu, sigma_a))
    b = pyro.sample("b", dist.Normal(ZERO, ONE))
    sigma = pyro.sample("sigma", dist.HalfNormal(ONE))
    with pyro.plate("house", len(floor)):
        return pyro.sample("y", dist.Normal(a[..., county] + b * floor, sigma), obs=y)


GLOBALS = ["mu", "sigma_a", "b", "sigma"]
args = (floor, county, log_radon)"""),
    ("markdown", """## 1. QEM, SVI and NUTS side by side

### QEM

Every house's likelihood reads all four global latents (`mu`, `sigma_a`, `b`, `sigma`).
With a particle dim each, one house would span K^4 particle combinations; in one particle
group (particle k of each used together) it spans K. We name the group explicitly with
`groups=[GLOBALS]`. K = 30 particles, `lr = 0.1`, and the iterates averaged over the
second half of the run (`average_from`) to remove the Monte Carlo noise of a fixed step
size."""),
    ("code", """QEM_STEPS = 400
guide = AutoQEM(model, groups=[GLOBALS])
inference = Inference(model, guide, K=30, lr=0.1, average_from=QEM_STEPS // 2)
start = time.perf_counter()
history = inference.fit(*args, num_steps=QEM_STEPS, progress_bar=False)
qem_seconds = time.perf_counter() - start
print(f"QEM: {QEM_STEPS} steps in {qem_seconds:.1f} s ({1000 * qem_seconds / QEM_STEPS:.0f} ms a step)")
ax = history.plot()
_ = ax.set_title("QEM: -log P_hat per step")"""),
    ("markdown", """### Pyro SVI

The standard recipe on the same model: `AutoNormal`, `Trace_ELBO`, Adam."""),
    ("code", """SVI_STEPS = 2000


def fit_svi(*svi_args, steps=SVI_STEPS, lr=0.03, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi_guide = AutoNormal(model)
    svi = SVI(model, svi_guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    losses = [svi.step(*svi_args) for _ in range(steps)]
    return svi_guide, losses


def svi_draws(svi_guide, floor, county, num_samples):
    \"\"\"Independent draws of every latent site from the fitted AutoNormal.\"\"\"
    predictive = Predictive(model, guide=svi_guide, num_samples=num_samples,
                            return_sites=GLOBALS + ["a"], parallel=True)
    with torch.no_grad():
        out = predictive(floor, county)
    return {k: v.reshape(num_samples, -1).squeeze(-1).double() for k, v in out.items()}


start = time.perf_counter()
svi_guide, svi_losses = fit_svi(*args)
svi_seconds = time.perf_counter() - start
print(f"SVI: {SVI_STEPS} steps in {svi_seconds:.1f} s ({1000 * svi_seconds / SVI_STEPS:.1f} ms a step)")"""),
    ("markdown", """### NUTS

A NUTS run long enough for a reference takes minutes on this model, too long for a
notebook. The benchmark script `python -m benchmarks.county` caches one (Pyro NUTS on a
non-centred twin of this model, means and sds of every latent). The cell below loads it
and prints its record, time included. If the cache is missing it runs a short NUTS here
instead (200 warm-up steps and 200 draws) and says so."""),
    ("code", """RESULTS = Path("../benchmarks/results")


def nuts_reference(name, nuts_model, sites, warmup=200, samples=200):
    \"\"\"(moments, label, seconds) of the cached NUTS reference, or of a short NUTS run.\"\"\"
    path = RESULTS / f"reference_county_{name}.npz"
    if path.exists():
        with np.load(path) as arrays:
            moments = {}
            for key in arrays.files:
                site, stat = key.rsplit(".", 1)
                moments.setdefault(site, {})[stat] = arrays[key].reshape(-1).squeeze()
        info = json.loads(path.with_suffix(".json").read_text())
        print(f"cached NUTS reference from `python -m benchmarks.county`: {info}")
        return moments, "NUTS (cached)", info["seconds"]
    from pyro.infer import MCMC, NUTS
    from pyro.infer.reparam import LocScaleReparam
    reparam = pyro.poutine.reparam(nuts_model, config={s: LocScaleReparam(0.0) for s in sites})
    mcmc = MCMC(NUTS(reparam, target_accept_prob=0.9, jit_compile=True, ignore_jit_warnings=True),
                num_samples=samples, warmup_steps=warmup, disable_progbar=True)
    start = time.perf_counter()
    mcmc.run(*args)
    seconds = time.perf_counter() - start
    latent = Predictive(reparam, posterior_samples=mcmc.get_samples(), return_sites=list(
        pyro.poutine.trace(nuts_model).get_trace(*args).stochastic_nodes))(*args)
    moments = {k: {"mean": v.reshape(samples, -1).mean(0).squeeze().numpy(),
                   "sd": v.reshape(samples, -1).std(0).squeeze().numpy()} for k, v in latent.items()}
    print(f"no cached reference: a SHORT NUTS run in this notebook ({warmup} warm-up steps, {samples} draws)")
    return moments, "NUTS (short run)", seconds


nuts, nuts_label, nuts_seconds = nuts_reference("intercepts", model, ["a"])"""),
    ("markdown", """### Posterior summaries

QEM's summaries come from joint posterior draws (`pyro_qem.sample_posterior`, section 2),
SVI's from independent draws of its fitted q. `draws_per_run=10` takes ten draws from each
particle run, so 500 draws need 50 particle runs instead of the default's 500, at the price
of repeated values (fine for summaries and plots). The NUTS time is that of the NUTS run
itself: for the cached reference, the time recorded with it (printed above)."""),
    ("code", """S = 500
start = time.perf_counter()
draws = pyro_qem.sample_posterior(inference, *args, num_samples=S, draws_per_run=10)
print(f"{S} joint draws in {time.perf_counter() - start:.1f} s:",
      {k: tuple(v.shape) for k, v in draws.items()})
svi_samples = svi_draws(svi_guide, floor, county, S)
methods = {"QEM": draws, "SVI": svi_samples}

rows = []
for site in GLOBALS:
    row = {"site": site}
    for name, d in methods.items():
        row[f"{name} mean"], row[f"{name} sd"] = d[site].mean().item(), d[site].std().item()
    row[f"{nuts_label} mean"], row[f"{nuts_label} sd"] = float(nuts[site]["mean"]), float(nuts[site]["sd"])
    rows.append(row)
print(pd.DataFrame(rows).set_index("site").round(3).to_string())
print(f"\\nwall time: QEM {qem_seconds:.1f} s, SVI {svi_seconds:.1f} s (both measured above), "
      f"{nuts_label} {nuts_seconds:.1f} s (the NUTS run's own record)")
for name, d in methods.items():
    z = (d["a"].mean(0).numpy() - nuts["a"]["mean"]) / nuts["a"]["sd"]
    ratio = d["a"].std(0).numpy() / nuts["a"]["sd"]
    print(f"{name} county intercepts against {nuts_label}: worst |mean error| {np.abs(z).max():.2f} sds, "
          f"sd ratio {ratio.min():.2f}-{ratio.max():.2f}")"""),
    ("code", """COLORS = {"QEM": "C0", "SVI": "C1", "NUTS": "k"}
fig, axes = plt.subplots(1, 4, figsize=(13, 2.6))
for ax, site in zip(axes, GLOBALS):
    estimates = [(name, d[site].mean().item(), d[site].std().item()) for name, d in methods.items()]
    estimates.append((nuts_label, float(nuts[site]["mean"]), float(nuts[site]["sd"])))
    for i, (name, m, s) in enumerate(estimates):
        ax.errorbar(m, -i, xerr=2 * s, fmt="o", color=COLORS[name.split()[0]], capsize=3)
    ax.set_yticks([0, -1, -2])
    ax.set_yticklabels([e[0] for e in estimates] if site == "mu" else [])
    ax.set_title(site)
    ax.set_ylim(-2.5, 0.5)
fig.suptitle("Global latents: mean +- 2 sd")
fig.tight_layout()"""),
    ("markdown", """### Partial pooling

The county intercepts are where the hierarchy matters. Left: the three smallest and three
largest counties, with the "no pooling" estimate (the county's own mean of
`log_radon - b * floor`, crosses) and each method's mean +- 2 sd. Right: every county's
no-pooling estimate and QEM's posterior mean against its number of houses. Small counties
are pulled towards the overall mean `mu`; large ones keep close to their own data."""),
    ("code", """b_mean = draws["b"].mean()
raw = torch.zeros(NUM_COUNTIES, dtype=torch.float64).index_add_(0, county, log_radon - b_mean * floor) / sizes
order = torch.argsort(sizes, stable=True)
shown = torch.cat([order[:3], order[-3:]]).tolist()

fig, axes = plt.subplots(1, 2, figsize=(13, 4))
ax = axes[0]
for j, c in enumerate(shown):
    for i, name in enumerate(methods):
        a = methods[name]["a"][:, c]
        ax.errorbar(a.mean(), j + 0.25 * i, xerr=2 * a.std(), fmt="o", color=COLORS[name], capsize=2,
                    label=name if j == 0 else None)
    ax.errorbar(nuts["a"]["mean"][c], j + 0.5, xerr=2 * nuts["a"]["sd"][c], fmt="o", color="k",
                capsize=2, label=nuts_label if j == 0 else None)
    ax.plot(raw[c], j + 0.25, "x", color="C3", ms=9, label="no pooling" if j == 0 else None)
ax.axvline(draws["mu"].mean(), color="gray", ls=":", label="mu")
ax.set_yticks([j + 0.25 for j in range(len(shown))])
ax.set_yticklabels([f"{labels[c]} (n = {int(sizes[c])})" for c in shown])
ax.set_xlabel("county intercept a")
ax.legend(fontsize=8)

ax = axes[1]
ax.scatter(sizes, raw, marker="x", color="C3", label="no pooling")
ax.scatter(sizes, draws["a"].mean(0), color="C0", s=15, label="QEM posterior mean")
ax.axhline(draws["mu"].mean(), color="gray", ls=":", label="mu")
ax.set_xscale("log")
ax.set_xlabel("houses in the county")
ax.set_ylabel("county intercept")
ax.legend(fontsize=8)
fig.tight_layout()
mu_mean = draws["mu"].mean()
for name, group in [("at most 2 houses", sizes <= 2), ("at least 50 houses", sizes >= 50)]:
    print(f"counties with {name} ({int(group.sum())}): mean |estimate - mu|, no pooling "
          f"{(raw - mu_mean).abs()[group].mean():.2f}, QEM {(draws['a'].mean(0) - mu_mean).abs()[group].mean():.2f}; "
          f"mean |QEM - no pooling| {(draws['a'].mean(0) - raw).abs()[group].mean():.2f}")"""),
    ("markdown", """The same six counties in ArviZ's forest plot (94% HDI), QEM's joint draws against SVI's q:"""),
    ("code", """def to_idata(d):
    return az.from_dict(posterior={k: v[None].numpy() for k, v in d.items()},
                        coords={"county": labels}, dims={"a": ["county"]})


axes = az.plot_forest([to_idata(draws), to_idata(svi_samples)], model_names=["QEM", "SVI"],
                      var_names=["a"], coords={"county": [labels[c] for c in shown]},
                      combined=True, figsize=(7, 4))"""),
    ("markdown", """## 2. Outputs on an indexed model

`posterior_moments` weighs all K particles of every plate element by their posterior
weights (no resampling), averaged over `num_runs` fresh particle runs. For a standard
deviation, centre the statistic on the means: `fn=(z - mean) ** 2`. The tempting
`E[z^2] - E[z]^2` subtracts two large numbers, each with its own Monte Carlo error from
its own particle runs; the cell prints what that gives for `mu`. The centred moments
agree with the joint draws above up to Monte Carlo error; the printout shows the largest
difference over the 85 intercepts."""),
    ("code", """means = pyro_qem.posterior_moments(inference, *args)
centred = pyro_qem.posterior_moments(
    inference, *args, fn={site: (lambda z, m=m: (z - m) ** 2) for site, m in means.items()})
sds = {site: v.sqrt() for site, v in centred.items()}
for site in GLOBALS:
    print(f"{site:8s} posterior_moments {means[site].item():7.3f} +- {sds[site].item():.3f}   "
          f"joint draws {draws[site].mean().item():7.3f} +- {draws[site].std().item():.3f}")
print(f"a: largest |mean difference| {(means['a'] - draws['a'].mean(0)).abs().max():.3f}, "
      f"largest |sd difference| {(sds['a'] - draws['a'].std(0)).abs().max():.3f}")
naive = pyro_qem.posterior_moments(inference, *args, fn=lambda z: z ** 2, sites=["mu"])["mu"] - means["mu"] ** 2
print(f"mu: E[z^2] - E[z]^2 from separate runs = {naive.item():.4f}, centred variance {centred['mu'].item():.4f}")"""),
    ("markdown", """### ArviZ

`to_inference_data` takes the joint draws (`draws=`; otherwise it draws its own) and
labels the county plate with `coords`. It adds the posterior predictive, the pointwise
log-likelihood of every house (so `az.loo` works), the observed data and the fit history.
The draws are independent, so use one chain and ignore `r_hat`."""),
    ("code", """idata = pyro_qem.to_inference_data(inference, *args, draws=draws, history=history,
                                  coords={"county": labels})
print(az.summary(idata, var_names=GLOBALS, kind="stats"))
loo = az.loo(idata, pointwise=True)
print(loo)"""),
    ("markdown", """`az.loo` estimates each house's leave-one-out predictive density by Pareto-smoothed
importance sampling; its table counts the houses whose Pareto k is above ArviZ's
threshold (the "bad" rows), where the estimate for that house is unreliable (ArviZ then
also prints a warning). Below: the posterior predictive density of log radon against the
data, and the k of every house."""),
    ("code", """fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
az.plot_ppc(idata, num_pp_samples=100, ax=axes[0])
axes[0].set_title("posterior predictive: log radon")
az.plot_khat(loo, ax=axes[1])
axes[1].set_title("PSIS-LOO Pareto k per house")
fig.tight_layout()"""),
    ("markdown", """### Held-out prediction, unseen counties included

Two whole counties (chosen at random among those with 5 to 20 houses) and 10% of the other
houses are held out. The model keeps all 85 counties in its plate, so the two unseen
counties are simply empty during the fit: their intercepts' posterior is the fitted
hierarchy, `Normal(mu, sigma_a)` averaged over the posterior of `mu` and `sigma_a`. The
cell prints that check too.

The score is `predictive_log_likelihood(model, draws, *test_args, pointwise=True)`, the
log pointwise predictive density `sum_i log mean_n p(y_i | draw n)` (higher is better),
for QEM's joint draws and SVI's q draws, over the unseen counties' houses and the others
separately."""),
    ("code", """gen = torch.Generator().manual_seed(1)
candidates = ((sizes >= 5) & (sizes <= 20)).nonzero().squeeze(-1)
unseen = candidates[torch.randperm(len(candidates), generator=gen)[:2]]
in_unseen = torch.isin(county, unseen)
others = (~in_unseen).nonzero().squeeze(-1)
test = in_unseen.clone()
test[others[torch.randperm(len(others), generator=gen)[: len(others) // 10]]] = True
train_args = tuple(v[~test] for v in args)
print(f"unseen: {[labels[c] for c in unseen]} ({int(in_unseen.sum())} houses); "
      f"{int(test.sum())} held-out houses in all, {int((~test).sum())} for training")

HELD_STEPS = 200
pyro.set_rng_seed(0)
held_guide = AutoQEM(model, groups=[GLOBALS])
held = Inference(model, held_guide, K=30, lr=0.1, average_from=HELD_STEPS // 2)
held.fit(*train_args, num_steps=HELD_STEPS, progress_bar=False)
held_draws = pyro_qem.sample_posterior(held, *train_args, num_samples=S, draws_per_run=10)
held_svi_guide, _ = fit_svi(*train_args)
held_svi_draws = svi_draws(held_svi_guide, *train_args[:2], S)

mu_d, sa_d, a_d = held_draws["mu"], held_draws["sigma_a"], held_draws["a"]
for c in unseen:
    print(f"QEM {labels[c]}: a {a_d[:, c].mean():.3f} +- {a_d[:, c].std():.3f}; hierarchy "
          f"Normal(mu, sigma_a): {mu_d.mean():.3f} +- {(sa_d ** 2 + mu_d.var()).mean().sqrt():.3f}")

subsets = {"unseen counties": in_unseen & test, "other held-out houses": ~in_unseen & test}
scores = {}
for name, d in [("QEM", held_draws), ("SVI", held_svi_draws)]:
    for subset, mask in subsets.items():
        test_args = tuple(v[mask] for v in args)
        scores[name, subset] = pyro_qem.predictive_log_likelihood(model, d, *test_args, pointwise=True)
table = pd.Series(scores).unstack()
table["all held-out"] = table.sum(axis=1)
print(f"HELD_STEPS = {HELD_STEPS} QEM steps, {SVI_STEPS} SVI steps; held-out log predictive density:")
print(table.round(2).to_string())"""),
    ("markdown", """## 3. Diagnostics

`diagnose` reports, for every site, the effective sample size `1 / sum_k w_k^2` of its
particle weights per plate element (between 1 and K), and the Pareto k-hat of the
importance weights `p(x, z) / q(z)` of 1000 joint draws from the fitted q. It raises
`QEMDiagnosticWarning` when an ESS falls below `max(2, K/10)` or k-hat exceeds
`min(1 - 1/log10(S), 0.7)`. The cell catches the warnings and prints their text."""),
    ("code", """with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", pyro_qem.QEMDiagnosticWarning)
    report = pyro_qem.diagnose(inference, *args)
print(pd.DataFrame(report.summary()).T.round(1).to_string())
print(f"\\nPareto k-hat {report.khat:.2f} (threshold {report.khat_threshold:.2f}), "
      f"ESS threshold {report.min_ess:g}")
diagnostic_warnings = [w for w in caught if issubclass(w.category, pyro_qem.QEMDiagnosticWarning)]
for w in diagnostic_warnings:
    print(f"\\n{w.category.__name__}: {w.message}")
if not diagnostic_warnings:
    print("\\nno QEMDiagnosticWarning")"""),
    ("markdown", """How to read this:

- **Weight ESS** near K means the particles of q are all useful: q covers the posterior
  of that site and QEM's weighted estimates rest on many particles. Near 1, one particle
  carries the estimate; the warning then names the site, and the remedies are more
  particles (`K`), a longer fit, or a wider initial q.
- **k-hat** judges q as a *joint* approximation of the whole posterior (89 dims here).
  AutoQEM's q is mean-field (one factor per site and county), so it cannot represent the
  correlations between, say, `mu` and the intercepts, and above the threshold independent
  draws of q (`sample_guide`) and moments of q are not reliable as a joint answer. The
  warning says what to do: take answers from `posterior_moments` and `sample_posterior`,
  which reweight and resample the particles jointly (the way the draws above were made),
  and check the sites with the lowest ESS. More particles or larger particle groups
  (sites that are strongly correlated in one group) also help.

Whether k-hat exceeds its threshold depends on this run's draws; the printout above is
this run's result."""),
    ("markdown", """## 4. Varying slopes: the same code

Now the floor effect varies by county too: `b` moves into the county plate with its own
mean `mu_b` and scale `sigma_b`, and each house reads `a[..., county] + b[..., county] *
floor`. A house's likelihood reads its county's `a` and `b`, so those two share a particle
group as well (K combinations per house instead of K^2); the five globals form the
other group. Nothing else changes. The fit is shorter than in section 1 (its step count is
printed); the cached NUTS reference for this model comes from the same benchmark script.

Most counties have few houses with a floor measurement, so the slope scale `sigma_b` sits
in a funnel: where it is small every slope must be close to `mu_b`. AutoQEM sees that
`b`'s scale is another latent and, for the counties whose data do not pin their slope
down, proposes `b = mu_b + sigma_b * b_decentered` instead of `b` itself
(`noncentre="auto"`, the default; `slopes_guide.noncentring_plan` says which counties
stay centred). `b` is then a deterministic site that the joint draws still return; with
`noncentre=None` the slope scale's sd comes out about 0.6x NUTS's."""),
    ("code", """SLOPE_GLOBALS = ["mu_a", "sigma_a", "mu_b", "sigma_b", "sigma"]


def slopes_model(floor, county, y=None):
    mu_a = pyro.sample("mu_a", dist.Normal(ZERO, 5 * ONE))
    sigma_a = pyro.sample("sigma_a", dist.HalfNormal(ONE))
    mu_b = pyro.sample("mu_b", dist.Normal(ZERO, ONE))
    sigma_b = pyro.sample("sigma_b", dist.HalfNormal(ONE))
    sigma = pyro.sample("sigma", dist.HalfNormal(ONE))
    with pyro.plate("county", NUM_COUNTIES):
        a = pyro.sample("a", dist.Normal(mu_a, sigma_a))
        b = pyro.sample("b", dist.Normal(mu_b, sigma_b))
    with pyro.plate("house", len(floor)):
        return pyro.sample("y", dist.Normal(a[..., county] + b[..., county] * floor, sigma), obs=y)


SLOPE_STEPS = 200
pyro.set_rng_seed(0)
slopes_guide = AutoQEM(slopes_model, groups=[SLOPE_GLOBALS, ["a", "b"]])
slopes = Inference(slopes_model, slopes_guide, K=30, lr=0.1, average_from=SLOPE_STEPS // 2)
start = time.perf_counter()
slopes_history = slopes.fit(*args, num_steps=SLOPE_STEPS, progress_bar=False)
print(f"QEM, varying slopes: {SLOPE_STEPS} steps in {time.perf_counter() - start:.1f} s")
slopes_draws = pyro_qem.sample_posterior(slopes, *args, num_samples=S, draws_per_run=10)
slopes_nuts, slopes_label, _ = nuts_reference("slopes", slopes_model, ["a", "b"])
rows = [{"site": s, "QEM mean": slopes_draws[s].mean().item(), "QEM sd": slopes_draws[s].std().item(),
         f"{slopes_label} mean": float(slopes_nuts[s]["mean"]), f"{slopes_label} sd": float(slopes_nuts[s]["sd"])}
        for s in SLOPE_GLOBALS]
print(pd.DataFrame(rows).set_index("site").round(3).to_string())
for s in ["a", "b"]:
    z = (slopes_draws[s].mean(0).numpy() - slopes_nuts[s]["mean"]) / slopes_nuts[s]["sd"]
    ratio = slopes_draws[s].std(0).numpy() / slopes_nuts[s]["sd"]
    print(f"{s}: worst |mean error| {np.abs(z).max():.2f} {slopes_label} sds, sd ratio {ratio.min():.2f}-{ratio.max():.2f}")"""),
    ("markdown", """Do varying slopes predict better? `az.compare` ranks the two models by PSIS-LOO, from
each fit's joint draws (higher `elpd_loo` is better; `dse` is the standard error of the
difference)."""),
    ("code", """slopes_idata = pyro_qem.to_inference_data(slopes, *args, draws=slopes_draws, coords={"county": labels})
comparison = az.compare({"varying intercepts": idata, "varying slopes": slopes_idata})
print(comparison[["rank", "elpd_loo", "p_loo", "elpd_diff", "dse", "warning"]].round(2))
ax = az.plot_compare(comparison, figsize=(7, 2.5))"""),
]


REPARAMETERISATION = [
    ("markdown", """# Reparameterisation invariance: QEM against SVI on a rescaled latent

Writing a model in different units should not change the answer, and ideally not the
work needed to find it. This notebook fits one small regression twice: once as written,
and once with the slope expressed in units 1000 times smaller (its prior divided by 1000,
and the likelihood multiplying it back by 1000). The two models describe exactly the same
data-generating process.

We fit both with QEM and with Pyro's SVI (`AutoNormal`, `Trace_ELBO`, Adam) and compare
learning curves: a held-out score against steps and against training seconds. QEM matches
moments, and moments of a rescaled variable are just rescaled, so its two runs should
trace the same curve. A gradient method takes steps measured in the parameters' own
units, so a rescaling changes what one step does. Every number quoted below is computed in
the notebook."""),
    ("code", """import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

import time

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_qem import AutoQEM, Inference, predictive_log_likelihood, sample_guide

%matplotlib inline
torch.set_num_threads(1)

torch.manual_seed(0)
N_TRAIN, N_TEST = 200, 200
x_all = torch.randn(N_TRAIN + N_TEST)
y_all = 1.0 + 0.7 * x_all + 0.5 * torch.randn(N_TRAIN + N_TEST)
x, y = x_all[:N_TRAIN], y_all[:N_TRAIN]
x_test, y_test = x_all[N_TRAIN:], y_all[N_TRAIN:]"""),
    ("markdown", """## One model, two sets of units

`scale=1` is the model as written. With `scale=1000` the latent `beta` has a prior 1000
times narrower and enters the likelihood multiplied by 1000: `scale * beta` has the same
distribution either way."""),
    ("code", """def make_model(scale):
    def model(x, y=None):
        alpha = pyro.sample("alpha", dist.Normal(0.0, 5.0))
        beta = pyro.sample("beta", dist.Normal(0.0, 5.0 / scale))
        sigma = pyro.sample("sigma", dist.HalfNormal(2.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(alpha + scale * beta * x, sigma), obs=y)
    return model


SCALES = {"original": 1.0, "rescaled x1000": 1000.0}


def held_out_score(model, draws):
    \"\"\"Held-out log pointwise predictive density: sum_i log mean_n p(y_i | draw n).\"\"\"
    return predictive_log_likelihood(model, draws, x_test, y_test, pointwise=True)"""),
    ("markdown", """## QEM

The three global latents are put in one particle group, so the likelihood costs K
evaluations per data point rather than K^3. The held-out score uses 200 independent draws
from q every 10 steps; its cost is not counted as training time."""),
    ("code", """def run_qem(scale, num_steps=300, every=10):
    pyro.set_rng_seed(1)
    model = make_model(scale)
    guide = AutoQEM(model, groups=[["alpha", "beta", "sigma"]])
    inference = Inference(model, guide, K=30, lr=0.1)
    curve = {"step": [], "seconds": [], "loss": [], "held_out": []}
    seconds = 0.0
    for step in range(1, num_steps + 1):
        start = time.perf_counter()
        loss = inference.step(x, y)
        seconds += time.perf_counter() - start
        curve["loss"].append(loss)
        if step % every == 0:
            curve["step"].append(step)
            curve["seconds"].append(seconds)
            curve["held_out"].append(held_out_score(model, sample_guide(guide, 200)))
    return curve, guide


run_qem(1.0, num_steps=2, every=1)  # untimed warm-up, see the SVI section
qem = {}
qem_guides = {}
for label, scale in SCALES.items():
    qem[label], qem_guides[label] = run_qem(scale)

gap = max(abs(a - b) for a, b in zip(qem["original"]["loss"], qem["rescaled x1000"]["loss"]))
print(f"largest difference between the two QEM runs' -log P_hat over 300 steps: {gap:.2g} nats")
for label, scale in SCALES.items():
    q = qem_guides[label].distributions()["beta"]
    print(f"QEM {label:15s} q(scale * beta): mean {scale * q.mean.item():.4f}, sd {scale * q.stddev.item():.4f}")"""),
    ("markdown", """## Pyro SVI

The standard recipe: `AutoNormal`, `Trace_ELBO`, Adam. The same held-out score is computed
from 200 draws of its q every 20 steps. A short untimed warm-up run of each method first
keeps one-off costs (lazy imports, first calls) out of both methods' clocks."""),
    ("code", """def run_svi(scale, num_steps=600, every=20, lr=0.02):
    pyro.set_rng_seed(1)
    pyro.clear_param_store()
    model = make_model(scale)
    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    predictive = Predictive(model, guide=guide, num_samples=200,
                            return_sites=["alpha", "beta", "sigma"])
    curve = {"step": [], "seconds": [], "loss": [], "held_out": []}
    seconds = 0.0
    for step in range(1, num_steps + 1):
        start = time.perf_counter()
        loss = svi.step(x, y)
        seconds += time.perf_counter() - start
        curve["loss"].append(loss)
        if step % every == 0:
            with torch.no_grad():
                draws = {k: v.reshape(200) for k, v in predictive(x).items()}
            curve["step"].append(step)
            curve["seconds"].append(seconds)
            curve["held_out"].append(held_out_score(model, draws))
    median = {k: v.item() for k, v in guide.median(x, y).items()}
    return curve, median


run_svi(1.0, num_steps=2, every=1)  # untimed warm-up: one-off import costs charged to neither method
svi = {}
for label, scale in SCALES.items():
    svi[label], median = run_svi(scale)
    print(f"SVI {label:15s} median of scale * beta: {scale * median['beta']:.4f}")"""),
    ("markdown", """## Learning curves

Lower is better: the plots show minus the held-out log predictive density on a log
axis. QEM's rescaled run is drawn dashed on top of its original run."""),
    ("code", """styles = {("QEM", "original"): dict(color="C0", lw=2.5),
          ("QEM", "rescaled x1000"): dict(color="C1", ls="--", lw=1.5),
          ("SVI", "original"): dict(color="C2", lw=2),
          ("SVI", "rescaled x1000"): dict(color="C3", lw=2)}
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for (method, label), style in styles.items():
    curve = (qem if method == "QEM" else svi)[label]
    score = [-v for v in curve["held_out"]]
    axes[0].plot(curve["step"], score, label=f"{method}, {label}", **style)
    axes[1].plot(curve["seconds"], score, **style)
axes[0].set_xlabel("step")
axes[1].set_xlabel("training time (s)")
axes[0].set_ylabel("held-out -log predictive density")
for ax in axes:
    ax.set_yscale("log")
axes[0].legend()
fig.suptitle("Same data, same model in two sets of units")
fig.tight_layout()"""),
    ("code", """fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for label in SCALES:
    axes[0].plot(qem[label]["loss"], label=label, **styles["QEM", label])
    axes[1].plot(svi[label]["loss"], label=label, **styles["SVI", label])
axes[0].set_title("QEM: -log P_hat per step (K = 30)")
axes[1].set_title("SVI: -ELBO per step")
for ax in axes:
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
fig.tight_layout()"""),
    ("code", """def summary(curves, name):
    for label in SCALES:
        c = curves[label]
        print(f"{name} {label:15s} final held-out score {c['held_out'][-1]:9.2f} "
              f"after {c['step'][-1]} steps, {c['seconds'][-1]:.2f} s of training")


summary(qem, "QEM")
summary(svi, "SVI")
qem_gap = max(abs(a - b) for a, b in zip(qem["original"]["held_out"], qem["rescaled x1000"]["held_out"]))
svi_gap = abs(svi["original"]["held_out"][-1] - svi["rescaled x1000"]["held_out"][-1])
print(f"QEM: largest held-out difference between the two runs at any checkpoint: {qem_gap:.2g} nats")
print(f"SVI: held-out difference between the two runs at the end: {svi_gap:.1f} nats")"""),
    ("markdown", """## Why

For a Normal q, QEM's update only ever computes weighted averages of the particles and of
their squares. Multiplying a latent by 1000 multiplies its prior draws, its particles, the
weighted averages and hence the new q by 1000, while the importance weights, which compare
densities, are unchanged: the rescaled run is the original run in other units, step for
step (up to floating-point rounding, which is what the printed differences measure).

SVI's Adam moves each variational parameter by roughly the learning rate per step,
whatever that parameter's units. In the rescaled model the slope's posterior sd is 1000
times smaller, so the initial scale of `AutoNormal` and the step size are both enormous
in those units. Tuning Adam per parameter would fix it, which is exactly the work QEM
does not ask for."""),
]


GUIDES_DISCRETE_GROUPS = [
    ("markdown", """# Hand-written guides, discrete latents, groups, and choosing K and lr

`AutoQEM` covers most models. This notebook goes through the rest of the toolbox:

1. a guide written by hand, mixing a moment-matched site with a gradient-fitted one;
2. discrete latents, summed out exactly (a Gaussian mixture) or sampled like any other
   site (an occupancy model);
3. particle groups, and what they do to the cost of a step;
4. a small grid over the number of particles `K` and the step size `lr`.

Every number quoted is computed by the notebook; the prose only says where to look."""),
    ("code", """import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

import itertools
import time

import matplotlib.pyplot as plt
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import init_to_value
from pyro.ops.indexing import Vindex

from pyro_qem import AutoQEM, Inference, QEMGuide
from pyro_qem.families import Normal

%matplotlib inline
torch.set_num_threads(1)"""),
    ("markdown", """## 1. A hand-written guide

A normal hierarchy: `mu ~ Normal(0, 10)`, `theta_i ~ Normal(mu, 1)`, `y_i ~ Normal(theta_i, 1)`.
Instead of a separate q for each of the 20 `theta_i`, the guide below ties them together
with a regression on the data, `theta_i ~ Normal(a + b (y_i - mean y), s)`, whose three
parameters are `pyro.param`s. `get_family` returns a family for the sites QEM should fit
by moment matching (`mu`) and `None` for those the guide builds itself in
`get_posterior`. `Inference` then needs an `optim` for the parameters; `objective="rws"`
uses the reweighted wake-sleep gradient. The exact posterior is known here:
`b = 1/2` and `a = (E[mu | y] + mean y) / 2`."""),
    ("code", """N = 20
torch.manual_seed(0)
y_reg = 2.0 + 5.0 * torch.randn(N)


def hierarchy(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("items", N):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.sample("obs", dist.Normal(theta, 1.0), obs=y)


class RegressionGuide(QEMGuide):
    def __init__(self, model, y, **kwargs):
        super().__init__(model, **kwargs)
        self.x = y - y.mean()

    def get_family(self, site, prior):
        return Normal() if site.name == "mu" else None     # mu: moment matching

    def get_posterior(self, name, prior):                  # theta: gradient on the params
        a = pyro.param("a", torch.tensor(0.0))
        b = pyro.param("b", torch.tensor(0.0))
        s = pyro.param("s", torch.tensor(1.0), constraint=constraints.positive)
        return dist.Normal(a + b * self.x, s)


pyro.clear_param_store()
pyro.set_rng_seed(0)
guide = RegressionGuide(hierarchy, y_reg, init_loc_fn=init_to_value(values={"mu": torch.tensor(0.0)}),
                        init_scale={"mu": 1.0})
inference = Inference(hierarchy, guide, K=30, lr=0.1, average_from=300,
                      optim=pyro.optim.Adam({"lr": 0.1}), objective="rws")
trace = {"a": [], "b": []}
for _ in range(600):
    inference.step(y_reg)
    trace["a"].append(pyro.param("a").item())
    trace["b"].append(pyro.param("b").item())

post_var = 1 / (1 / 100 + N / 2)
exact_mu, exact_sd = post_var * y_reg.sum().item() / 2, post_var ** 0.5
exact = {"a": (exact_mu + y_reg.mean().item()) / 2, "b": 0.5}
q_mu = guide.distributions()["mu"]
print(f"mu: q mean {q_mu.mean.item():.3f} (exact {exact_mu:.3f}), q sd {q_mu.stddev.item():.3f} (exact {exact_sd:.3f})")
for k in "ab":
    print(f"{k}: fitted {pyro.param(k).item():.3f}, exact {exact[k]:.3f}")"""),
    ("code", """fig, axes = plt.subplots(1, 2, figsize=(10, 3))
for ax, k in zip(axes, "ab"):
    ax.plot(trace[k], label="fitted by gradient (RWS)")
    ax.axhline(exact[k], color="k", ls="--", label="exact")
    ax.set_title(f"guide parameter {k}")
    ax.set_xlabel("step")
axes[0].legend()
fig.tight_layout()"""),
    ("markdown", """## 2a. Discrete latents summed exactly: a Gaussian mixture

Each point's component `c` is marked `infer={"enumerate": "parallel"}`, as for Pyro's
`TraceEnum_ELBO`. QEM then sums it over its two values instead of sampling it: it gets no
q and no particles. As in Pyro, index with `Vindex` so that the enumeration dim and the
particle dims broadcast. Priors centred at -2 and 2 break the label symmetry."""),
    ("code", """torch.manual_seed(1)
c_true = torch.randint(0, 2, (60,))
y_mix = torch.where(c_true == 0, -1.5, 1.5) + torch.randn(60)


def mixture(y):
    locs = pyro.sample("locs", dist.Normal(torch.tensor([-2.0, 2.0]), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        c = pyro.sample("c", dist.Categorical(torch.tensor([0.5, 0.5])),
                        infer={"enumerate": "parallel"})
        pyro.sample("obs", dist.Normal(Vindex(locs)[..., c], 1.0), obs=y)


pyro.set_rng_seed(1)
mix_guide = AutoQEM(mixture)
mix_inference = Inference(mixture, mix_guide, K=30, lr=0.1, average_from=150)
mix_history = mix_inference.fit(y_mix, num_steps=300, progress_bar=False)
q_locs = mix_guide.distributions()["locs"]
print("latent sites with a q:", list(mix_guide.distributions()))
print("q(locs) mean", q_locs.mean.numpy().round(3), "sd", q_locs.stddev.numpy().round(3))

# Exact posterior of the two locations on a grid, for comparison.
grid = torch.linspace(-4, 4, 401, dtype=torch.float64)
ga, gb, yy = grid[:, None, None], grid[None, :, None], y_mix.double()
log_post = (dist.Normal(-2.0, 1.0).log_prob(grid)[:, None] + dist.Normal(2.0, 1.0).log_prob(grid)
            + (torch.logaddexp(dist.Normal(ga, 1.0).log_prob(yy), dist.Normal(gb, 1.0).log_prob(yy))
               - torch.log(torch.tensor(2.0))).sum(-1))
w = (log_post - log_post.logsumexp((0, 1))).exp()
marginals = [w.sum(1), w.sum(0)]
for i, m in enumerate(marginals):
    mean = (m * grid).sum()
    sd = ((m * (grid - mean) ** 2).sum()).sqrt()
    print(f"exact locs[{i}]: mean {mean:.3f}, sd {sd:.3f}")"""),
    ("code", """fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
axes[0].hist(y_mix.numpy(), bins=25, density=True, color="#ccc", label="data")
xs = torch.linspace(-5, 5, 300)
for i in range(2):
    axes[0].plot(xs, 0.5 * dist.Normal(q_locs.mean[i], 1.0).log_prob(xs).exp(), label=f"component {i} at q mean")
    axes[1].plot(grid, marginals[i] / (grid[1] - grid[0]), color=f"C{i}", label=f"exact locs[{i}]")
    axes[1].plot(grid, dist.Normal(q_locs.mean[i].double(), q_locs.stddev[i].double()).log_prob(grid).exp(),
                 color=f"C{i}", ls="--", label=f"QEM q(locs[{i}])")
axes[0].set_title("data and fitted components")
axes[1].set_title("posterior of the component locations")
axes[1].set_xlim(-3, 3)
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()"""),
    ("markdown", """## 2b. Discrete latents sampled: an occupancy model

Surveyors visit 40 sites 4 times each. A site is occupied (`z_i = 1`) with probability `psi`;
at an occupied site each visit detects the species with probability `p`; an empty site is
never detected. A site with no detection is either empty or occupied but missed, and that
ambiguity is what separates `psi` from `p`.

Without the `enumerate` annotation `z_i` is an ordinary latent site: `AutoQEM` gives it a
Bernoulli q per site, draws K particles of it and fits it by moment matching. The same
model with `z` enumerated sums it exactly; both fits are compared with the exact posterior
of `(psi, p)` on a grid."""),
    ("code", """SITES, VISITS = 40, 4
torch.manual_seed(3)
occupied = (torch.rand(SITES, 1) < 0.6).float()
detections = ((torch.rand(SITES, VISITS) < 0.5) * occupied).float()


def occupancy(detections, enumerate_z):
    psi = pyro.sample("psi", dist.Beta(1.0, 1.0))
    p = pyro.sample("p", dist.Beta(1.0, 1.0))
    infer = {"enumerate": "parallel"} if enumerate_z else {}
    with pyro.plate("sites", SITES, dim=-2):
        z = pyro.sample("z", dist.Bernoulli(psi), infer=infer)
        with pyro.plate("visits", VISITS, dim=-1):
            pyro.sample("y", dist.Bernoulli(z * p), obs=detections)


occ = {}
for enumerate_z in (False, True):
    pyro.set_rng_seed(3)
    g = AutoQEM(occupancy)
    start = time.perf_counter()
    Inference(occupancy, g, K=30, lr=0.1, average_from=200).fit(
        detections, enumerate_z, num_steps=400, progress_bar=False)
    occ[enumerate_z] = (g.distributions(), time.perf_counter() - start)

# Exact posterior of (psi, p) on a grid: each site's likelihood sums over z.
g1 = torch.linspace(0.0005, 0.9995, 1000, dtype=torch.float64)
psi_g, p_g = g1[:, None, None], g1[None, :, None]
d = detections.sum(-1).double()
log_post = (psi_g * p_g ** d * (1 - p_g) ** (VISITS - d) + (1 - psi_g) * (d == 0)).log().sum(-1)
w = (log_post - log_post.logsumexp((0, 1))).exp()
exact_occ = {"psi": w.sum(1), "p": w.sum(0)}

rows = []
for name, m in exact_occ.items():
    mean = (m * g1).sum().item()
    rows.append({"site": name, "method": "exact (grid)", "mean": mean,
                 "sd": ((m * (g1 - mean) ** 2).sum()).sqrt().item()})
    for enumerate_z, (q, seconds) in occ.items():
        rows.append({"site": name, "method": "z enumerated" if enumerate_z else "z sampled",
                     "mean": q[name].mean.item(), "sd": q[name].stddev.item(), "seconds": seconds})
print(pd.DataFrame(rows).round(4).to_string(index=False))

q_sampled = occ[False][0]["z"].probs.reshape(-1)
detected = detections.sum(-1) > 0
print(f"sampled z: q(z=1) ranges {q_sampled[detected].min():.3f}-{q_sampled[detected].max():.3f} at the "
      f"{int(detected.sum())} sites with a detection, {q_sampled[~detected].min():.3f}-"
      f"{q_sampled[~detected].max():.3f} at the {int((~detected).sum())} without")"""),
    ("code", """fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
for ax, name in zip(axes, ["psi", "p"]):
    ax.plot(g1, exact_occ[name] / (g1[1] - g1[0]), color="k", lw=2, label="exact")
    for enumerate_z, (q, _) in occ.items():
        ax.plot(g1, q[name].log_prob(g1.float().clamp(1e-4, 1 - 1e-4)).exp(),
                ls="--" if enumerate_z else "-", label="z enumerated" if enumerate_z else "z sampled")
    ax.set_title(f"posterior of {name}")
    ax.legend(fontsize=8)
order = torch.argsort(detections.sum(-1), stable=True)
axes[2].bar(range(SITES), q_sampled[order], color=["C1" if detected[i] else "C0" for i in order])
axes[2].set_title("q(z_i = 1), sampled z (orange: detected)")
axes[2].set_xlabel("site, by number of detections")
fig.tight_layout()"""),
    ("markdown", """## 3. Groups: sharing a particle dimension

Every latent site has its own particle dimension by default, so a likelihood that reads
three global latents is evaluated for all K^3 combinations of their particles at every data
point. Grouping them (`groups=[[...]]`) makes particle k of each member be used together:
K evaluations per data point, but only K joint combinations to weigh, so each step learns
less. The cell below measures both on a three-parameter regression."""),
    ("code", """torch.manual_seed(0)
x_lin = torch.randn(200)
y_lin = 1.0 + 0.7 * x_lin + 0.5 * torch.randn(200)


def regression(x, y):
    alpha = pyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 5.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(2.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(alpha + beta * x, sigma), obs=y)


group_runs = {}
for label, groups, steps in [("ungrouped", None, 40), ("grouped", [["alpha", "beta", "sigma"]], 300)]:
    pyro.set_rng_seed(0)
    inf = Inference(regression, AutoQEM(regression, groups=groups), K=30, lr=0.1)
    losses, seconds = [], []
    start = time.perf_counter()
    for _ in range(steps):
        losses.append(inf.step(x_lin, y_lin))
        seconds.append(time.perf_counter() - start)
    group_runs[label] = (losses, seconds)
    print(f"{label:9s}: {1000 * seconds[-1] / steps:6.1f} ms per step, -log P_hat after {steps} steps "
          f"{sum(losses[-10:]) / 10:.1f} (mean of the last 10)")"""),
    ("code", """fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for label, (losses, seconds) in group_runs.items():
    axes[0].plot(range(1, len(losses) + 1), losses, label=label)
    axes[1].plot(seconds, losses, label=label)
axes[0].set_xlabel("step")
axes[1].set_xlabel("seconds")
for ax in axes:
    ax.set_ylabel("-log P_hat")
    ax.set_yscale("log")
    ax.legend()
fig.suptitle("Three global latents: own particle dims (K^3 per point) or one group (K per point)")
fig.tight_layout()"""),
    ("markdown", """## 4. Choosing K and lr

A hierarchy of 20 groups with 10 observations each (`mu` and `tau` grouped), fitted for
150 steps at every combination of `K` in 3, 10, 30, 100 and `lr` in 0.03, 0.1, 0.3. To
compare runs with different `K` fairly, each final q is scored by the same yardstick:
`-log P_hat` at K = 30, averaged over 10 fresh evaluations (`evaluate_loss` does not
change q). Lower is better; the time is the 150 training steps."""),
    ("code", """J, n = 20, 10
torch.manual_seed(0)
y_h = 3 + 2 * torch.randn(J, 1) + torch.randn(J, n)


def groups_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    tau = pyro.sample("tau", dist.HalfNormal(5.0))
    with pyro.plate("groups", J, dim=-2):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        with pyro.plate("obs", n, dim=-1):
            pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


rows, curves = [], {}
for K, lr in itertools.product([3, 10, 30, 100], [0.03, 0.1, 0.3]):
    pyro.set_rng_seed(0)
    g = AutoQEM(groups_model, groups=[["mu", "tau"]])
    inf = Inference(groups_model, g, K=K, lr=lr)
    start = time.perf_counter()
    curves[K, lr] = [inf.step(y_h) for _ in range(150)]
    seconds = time.perf_counter() - start
    yardstick = Inference(groups_model, g, K=30)
    score = sum(yardstick.evaluate_loss(y_h) for _ in range(10)) / 10
    rows.append({"K": K, "lr": lr, "seconds": seconds, "final -log P_hat (K=30)": score})
grid_results = pd.DataFrame(rows)
print(grid_results.round(3).to_string(index=False))
best = grid_results["final -log P_hat (K=30)"].min()
close = grid_results[grid_results["final -log P_hat (K=30)"] < best + 0.5]
print(f"\\nwithin 0.5 nats of the best score: "
      + ", ".join(f"K={r.K} lr={r.lr}" for r in close.itertuples()))"""),
    ("code", """fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
for i, lr in enumerate([0.03, 0.1, 0.3]):
    sub = grid_results[grid_results.lr == lr]
    axes[0].plot(sub.K, sub["final -log P_hat (K=30)"], "o-", color=f"C{i}", label=f"lr={lr}")
    axes[1].plot(sub.K, sub.seconds, "o-", color=f"C{i}", label=f"lr={lr}")
    for K, ls in [(3, ":"), (30, "-")]:
        axes[2].plot(curves[K, lr], color=f"C{i}", ls=ls, label=f"K={K}, lr={lr}")
axes[0].set_ylabel("final -log P_hat at K = 30")
axes[1].set_ylabel("seconds for 150 steps")
axes[2].set_ylabel("-log P_hat (own K) per step")
axes[2].set_yscale("log")
axes[2].set_xlabel("step")
for ax in axes[:2]:
    ax.set_xscale("log")
    ax.set_xlabel("K")
for ax in axes:
    ax.legend(fontsize=7)
fig.tight_layout()"""),
    ("markdown", """Reading the grid: the left panel shows which settings end closest to the best score,
the middle one what each `K` costs per step on this model, and the right one how quickly
the loss levels off at small and moderate `K`. The printed list above names the settings
that came within half a nat of the best. To take a final answer from a fixed `lr`, add
`average_from=` (see the method page) so that the last iterates are averaged."""),
]


LLM_EVALS = [
    ("markdown", """# Error bars for LLM evaluations with `pyro_qem.evals`

A benchmark score from a few hundred questions is an estimate, and the usual
"accuracy +- 1.96 standard errors" (the CLT interval) is a poor description of its
uncertainty at that size: it ignores that accuracy lives in [0, 1], has zero width at 0% and
100%, and covers the truth less often than it claims. `pyro_qem.evals` gives Bayesian
intervals (exact Beta posteriors), Wilson intervals, intervals for questions that come in
clusters, paired comparisons of models answering the same questions, and the probability
that each model is the best.

**The data are synthetic.** `data/llm_results.csv` was written by the seeded script
`data/make_llm_results.py`: six made-up models (`synth-*`) on a made-up 150-question
benchmark with 10 task clusters of 15 questions. Each answer is correct with probability
`sigmoid(ability - task difficulty - question difficulty)`, so tasks differ in difficulty
and hard questions are hard for every model, as in real benchmarks. No real model or
benchmark is behind these numbers."""),
    ("code", """import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Image, display
from scipy.stats import binom

from pyro_qem import evals

%matplotlib inline

df = pd.read_csv("data/llm_results.csv", index_col="question")
scores = df.drop(columns="task")
print(f"{scores.shape[0]} questions, {df.task.nunique()} tasks, {scores.shape[1]} models")
df.head()"""),
    ("markdown", """## Accuracy and four kinds of interval

`interval_table` puts each model's accuracy next to the Bayes (Beta(1, 1) prior), Wilson,
Clopper-Pearson and CLT 95% intervals. `clustered_intervals` adds an interval that
accounts for the questions coming in tasks (next section)."""),
    ("code", """table = evals.interval_table(scores)
clustered = evals.clustered_intervals(df, cluster="task")
table["clustered_lower"], table["clustered_upper"] = clustered.loc["lower"], clustered.loc["upper"]
table.round(3)[["correct", "accuracy", "bayes_lower", "bayes_upper", "wilson_lower", "wilson_upper",
                "clt_lower", "clt_upper", "clustered_lower", "clustered_upper"]]"""),
    ("code", """methods = {"CLT": "clt", "Wilson": "wilson", "Bayes": "bayes", "clustered (tasks)": "clustered"}
fig, ax = plt.subplots(figsize=(9, 4))
models = list(table.index)
for j, (label, key) in enumerate(methods.items()):
    pos = np.arange(len(models)) + (j - 1.5) * 0.18
    ax.vlines(pos, table[f"{key}_lower"], table[f"{key}_upper"], color=f"C{j}", lw=2, label=label)
    ax.plot(pos, table.accuracy, "o", color=f"C{j}", ms=3)
ax.set_xticks(range(len(models)))
ax.set_xticklabels(models)
ax.set_ylabel("accuracy (95% interval)")
ax.set_title("Six models on 150 questions")
ax.legend(ncol=2, fontsize=8, loc="upper left")
fig.tight_layout()"""),
    ("markdown", """## Why not the CLT interval: coverage at small N

How often does a 95% interval contain the true accuracy? For N questions answered
independently with accuracy p, the number correct is Binomial(N, p), so the coverage can be
computed exactly by summing over every possible score. The cell does this for the three
single-model intervals at the size of one task (15 questions) and of the whole benchmark
(150). The Bayes interval's coverage here is frequentist coverage at a fixed p; it is
calibrated on average over the prior by construction."""),
    ("code", """def coverage(method, N, ps):
    s = np.arange(N + 1)
    lo, hi = method(s, np.full(N + 1, N))
    return np.array([binom.pmf(s, N, p)[(lo <= p) & (p <= hi)].sum() for p in ps])


ps = np.linspace(0.01, 0.99, 197)
interval_fns = {"CLT": evals.clt_interval, "Wilson": evals.wilson_interval, "Bayes": evals.beta_interval}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
for ax, N in zip(axes, [15, 150]):
    for label, fn in interval_fns.items():
        cov = coverage(fn, N, ps)
        ax.plot(ps, cov, label=label, lw=1)
        print(f"N={N:3d} {label:6s}: mean coverage over p {cov.mean():.3f}, lowest {cov.min():.3f}")
    ax.axhline(0.95, color="k", ls="--", lw=1)
    ax.set_title(f"N = {N} questions")
    ax.set_xlabel("true accuracy p")
axes[0].set_ylabel("coverage of a 95% interval")
axes[0].set_ylim(0.5, 1.0)
axes[0].legend()
fig.tight_layout()"""),
    ("markdown", """Per task the difference is stark. Below, the best model's accuracy on each task of 15
questions, with CLT and Bayes intervals: where a model answers every question of a task
correctly, the CLT interval has no width at all."""),
    ("code", """best_model = scores.mean().idxmax()
per_task = df.groupby("task")[best_model].agg(["sum", "size"])
clt_lo, clt_hi = evals.clt_interval(per_task["sum"], per_task["size"])
bay_lo, bay_hi = evals.beta_interval(per_task["sum"], per_task["size"])
acc = per_task["sum"] / per_task["size"]
fig, ax = plt.subplots(figsize=(9, 3.5))
x = np.arange(len(per_task))
for shift, (label, lo, hi) in zip((-0.12, 0.12), [("CLT", clt_lo, clt_hi), ("Bayes", bay_lo, bay_hi)]):
    color = "C0" if label == "CLT" else "C2"
    ax.vlines(x + shift, lo, hi, color=color, lw=2, label=label)
    ax.plot(x + shift, acc, "o", color=color, ms=4)
ax.set_xticks(x)
ax.set_xticklabels(per_task.index, rotation=45, ha="right")
ax.set_ylabel("accuracy on the task")
ax.set_title(f"{best_model}, one interval per task of 15 questions")
ax.legend()
fig.tight_layout()
zero = int((clt_hi - clt_lo == 0).sum())
print(f"{best_model}: {zero} of {len(per_task)} tasks have a zero-width CLT interval")"""),
    ("markdown", """## Clustered questions

Questions of one task share their difficulty, so they are not independent draws: a
benchmark of 10 tasks carries less information than 150 unrelated questions.
`clustered_intervals` fits a hierarchical Beta-Binomial model (each task has its own
accuracy around the model's overall accuracy) and integrates its posterior
deterministically. The ratio below compares its width with the independent Bayes interval."""),
    ("code", """independent = evals.independent_intervals(scores)
widths = pd.DataFrame({
    "independent width": independent.loc["upper"] - independent.loc["lower"],
    "clustered width": clustered.loc["upper"] - clustered.loc["lower"],
})
widths["ratio"] = widths["clustered width"] / widths["independent width"]
print(widths.round(3))
fig, ax = evals.plot_intervals(scores, clustered, title="Accuracy with task-clustered 95% intervals")"""),
    ("markdown", """## Comparing models on the same questions

Every model answered the same 150 questions, and a hard question tends to be hard for all
of them. `paired_comparisons` models two models' answers jointly (a latent bivariate normal
per question, thresholded), which removes the shared question difficulty from the
comparison; `independent_comparisons` treats the two accuracies as unrelated. Each entry is
`P(row model more accurate than column model)`."""),
    ("code", """independent_cmp = evals.independent_comparisons(scores)
paired_cmp = evals.paired_comparisons(scores)
fig, axes = plt.subplots(1, 2, figsize=(13, 5))
evals.plot_comparisons(independent_cmp, title="independent posteriors", ax=axes[0])
evals.plot_comparisons(paired_cmp, title="paired (same questions)", ax=axes[1])
fig.tight_layout()"""),
    ("markdown", """The two models closest in accuracy are the interesting pair. `difference_interval`
gives a credible interval on the difference of their accuracies and `P(A > B)`, with
and without pairing."""),
    ("code", """acc = scores.mean().sort_values()
gaps = acc.diff().iloc[1:]
model_b, model_a = acc.index[list(acc.index).index(gaps.idxmin()) - 1], gaps.idxmin()
diff = pd.DataFrame({
    "independent": evals.difference_interval(scores, model_a, model_b),
    "paired": evals.difference_interval(scores, model_a, model_b, paired=True),
}).T
diff["width"] = diff["upper"] - diff["lower"]
print(f"{model_a} minus {model_b} (accuracies {acc[model_a]:.3f} and {acc[model_b]:.3f})")
diff.round(4)"""),
    ("markdown", """## Which model is best?

`prob_best` is the posterior probability that each model has the highest accuracy (exact
quadrature over the independent Beta posteriors); `expected_ranks` is each model's
posterior expected rank, from the independent or the paired comparison matrix. The
second column asks the same question with the leading model left out, which is where the
close calls are."""),
    ("code", """others = scores.drop(columns=best_model)
ranking = pd.DataFrame({
    "P(best)": evals.prob_best(scores),
    f"P(best) without {best_model}": evals.prob_best(others),
    "expected rank (independent)": evals.expected_ranks(scores),
    "expected rank (paired)": evals.expected_ranks(scores, paired=True),
})
print(ranking.round(3))
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
ranking[["P(best)", f"P(best) without {best_model}"]].plot.bar(ax=axes[0])
axes[0].set_ylabel("P(best)")
ranking[["expected rank (independent)", "expected rank (paired)"]].plot.bar(ax=axes[1])
axes[1].set_ylabel("expected rank (1 = best)")
for ax in axes:
    ax.tick_params(axis="x", rotation=45)
fig.tight_layout()"""),
    ("markdown", """## The command line

The same analysis from a shell, on any CSV with one row per question and one 0/1 column
per model:

```bash
python -m pyro_qem.evals data/llm_results.csv --index-column question --cluster-column task \\
    --paired --plot intervals.png
```

Here it runs through `subprocess`, writing the plot to a temporary folder."""),
    ("code", """with tempfile.TemporaryDirectory() as tmp:
    png = Path(tmp) / "intervals.png"
    result = subprocess.run(
        [sys.executable, "-m", "pyro_qem.evals", "data/llm_results.csv", "--index-column", "question",
         "--cluster-column", "task", "--paired", "--plot", str(png)],
        capture_output=True, text=True, check=True)
    print(result.stdout)
    display(Image(filename=str(png)))"""),
]

LARGE_DATA = [
    ("markdown", """# Large data: minibatches, memory, threads and several processes

What changes when a model has many rows. The notebook

1. fits a Bayesian logistic regression on 100,000 rows generated here, full batch, with
   the recommended averaging, and checks q against the exact posterior (its Laplace
   approximation, computed here by Newton's method);
2. fits the same model on minibatches (`pyro.plate("data", N, subsample_size=B)`, as in
   Pyro) against the same exact answer;
3. shows the memory budget (`max_memory`, `MemoryBudgetError`) and `num_threads="auto"`;
4. launches a fit across two processes with `torchrun` and checks that both end with the
   same q and the same `log P_hat`;
5. says what is not there yet.

Every number in the outputs is computed by this notebook, except the benchmark figures
quoted, labelled, at the end of section 4. It runs in well under a minute on 2 CPU cores."""),
    ("code", """import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import torch

from pyro_qem import AutoQEM, Inference, MemoryBudgetError, SubsampleWarning

%matplotlib inline
torch.set_num_threads(1)

N, P = 100_000, 4
generator = torch.Generator().manual_seed(0)
X = torch.randn(N, P, generator=generator)
beta_true = torch.randn(P, generator=generator) / P ** 0.5
y = torch.bernoulli(torch.sigmoid(X @ beta_true), generator=generator)


def model(X, y, batch_size=None):
    beta = pyro.sample("beta", dist.Normal(torch.zeros(P), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0], subsample_size=batch_size) as idx:
        pyro.sample("y", dist.Bernoulli(logits=(X[idx] * beta).sum(-1)), obs=y[idx])"""),
    ("markdown", """## 1. Full batch, and the exact answer

With 100,000 rows and a Normal(0, 1) prior the posterior is Gaussian to well under 1% of
an sd, so its Laplace approximation (Newton's method in float64, a fraction of a second)
serves as the exact answer."""),
    ("code", """def laplace(X, y):
    X, y = X.double(), y.double()
    beta = torch.zeros(X.shape[1], dtype=torch.float64)
    for _ in range(50):
        p = torch.sigmoid(X @ beta)
        hessian = (X * (p * (1 - p))[:, None]).T @ X + torch.eye(X.shape[1], dtype=torch.float64)
        step = torch.linalg.solve(hessian, X.T @ (y - p) - beta)
        beta = beta + step
        if step.abs().max() < 1e-12:
            break
    return beta, torch.linalg.inv(hessian).diagonal().sqrt()


exact_mean, exact_sd = laplace(X, y)
print("exact mean:", exact_mean.numpy().round(4))
print("exact sd:  ", exact_sd.numpy().round(4))"""),
    ("markdown", """The README's settings: K = 10 particles, `lr = 0.1`, 200 steps, and the guide reports
the running average of the iterates from step 100 on (`average_from=100`), which removes
the Monte Carlo noise a fixed `lr` leaves in q. The 4 coefficients are one vector site,
so each step's largest factor is the likelihood over K x N = 10^6 entries."""),
    ("code", """def fit(model, *args, K=10, steps=200, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = AutoQEM(model)
    inference = Inference(model, guide, K=K, lr=0.1, average_from=steps // 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = inference.fit(*args, num_steps=steps, progress_bar=False)
    # q is read now: the next fit's guide takes over the param store's names
    return guide.distributions(), history, caught


def score(q, mean, sd):
    \"\"\"Worst |mean error| in exact sds, and sd / exact sd per coordinate.\"\"\"
    return (((q.mean.double() - mean) / sd).abs().max().item(),
            (q.stddev.double() / sd).numpy())


full_q, full_history, _ = fit(model, X, y)
full_err, full_ratio = score(full_q["beta"], exact_mean, exact_sd)
print(f"full batch: {sum(full_history.seconds):.1f} s for 200 steps, "
      f"median {1000 * np.median(full_history.seconds):.1f} ms/step")
print(f"worst mean error {full_err:.3f} exact sd; sd / exact sd {full_ratio.round(2)}")"""),
    ("markdown", """## 2. Minibatches

Subsampling is declared the Pyro way, `pyro.plate("data", N, subsample_size=B)`: each step
sees B rows and scales their log likelihood by N / B, so `-log P_hat` stays an estimate for
the full data set, and a step gets cheaper in proportion to B. `beta` lives outside the
subsampled plate, so each step's weights describe the posterior given *one* minibatch,
whose centre scatters around the full-data one by about sqrt(N / B) of its sds: smoothing
those posteriors' moments would give q too wide a spread. QEM instead fits such sites by
**regression** at each minibatch step: the group's weights give the log joint at each of
its K particles, a least-squares fit of those values on q's sufficient statistics (here
`beta` and `beta**2`, per coefficient) gives natural parameters (for a Normal: precision
and precision times mean), and those are linear in the scaled minibatch likelihood, so
their average over minibatches is the full-data answer. `Inference` also walks the rows
in passes (every row once per pass, in a new random order), so the scaled minibatch
terms of a pass add up to the full data, and iterate averaging (`average_from`) removes
what is left. The fit has 2 P + 1 coefficients and wants at least twice as many
particles (here K >= 18 for P = 4), so these fits use K = 30.

Ten passes at each minibatch size (100 steps of 10,000 rows, 1,000 steps of 1,000),
averaged over the last five:"""),
    ("code", """minibatch = {}
for B in [10_000, 1_000]:
    steps = 10 * N // B
    runs = [fit(model, X, y, B, K=30, steps=steps, seed=seed) for seed in range(3)]
    minibatch[B] = runs
    for seed, (q, history, caught) in enumerate(runs):
        err, ratio = score(q["beta"], exact_mean, exact_sd)
        notes = sorted({w.category.__name__ for w in caught})
        print(f"B = {B:>6} (N/B = {N // B:>3}) seed {seed}: {steps} steps, median "
              f"{1000 * np.median(history.seconds):.1f} ms/step, worst mean error {err:.2f} sd, "
              f"sd / exact {ratio.round(2)}" + (f", warnings: {notes}" if notes else ""))"""),
    ("markdown", """The learning curves and the cost of a step (per-step wall time, a median line each):"""),
    ("code", """fig, (ax_loss, ax_time) = plt.subplots(1, 2, figsize=(11, 3.8))
curves = [("full batch", full_history)] + [(f"B = {B}", minibatch[B][0][1]) for B in minibatch]
for label, history in curves:
    ax_loss.plot(range(1, len(history.losses) + 1), history.losses, label=label, alpha=0.7)
    ms = 1000 * np.array(history.seconds)
    ax_time.plot(range(1, len(ms) + 1), ms, label=f"{label} (median {np.median(ms):.1f} ms)", alpha=0.7)
ax_loss.set(xlabel="step", ylabel="-log P_hat", xscale="log", title="loss (minibatches: scaled by N/B)")
ax_loss.set_ylim(min(full_history.losses) - 2000, min(full_history.losses) + 15000)
ax_time.set(xlabel="step", ylabel="ms per step", yscale="log", title="wall time per step")
ax_loss.legend(); ax_time.legend()
fig.tight_layout()"""),
    ("markdown", """The spread: sd of q over the exact sd for each coefficient (seed 0; the dashed line
is exact)."""),
    ("code", """labels = ["full batch"] + [f"B = {B}" for B in minibatch]
ratios = [full_ratio] + [score(minibatch[B][0][0]["beta"], exact_mean, exact_sd)[1]
                         for B in minibatch]
fig, ax = plt.subplots(figsize=(8, 3.5))
width = 0.8 / len(labels)
for i, (label, ratio) in enumerate(zip(labels, ratios)):
    ax.bar(np.arange(P) + i * width, ratio, width, label=label)
ax.axhline(1.0, color="k", ls="--", lw=1)
ax.set_xticks(np.arange(P) + width * (len(labels) - 1) / 2, [f"beta[{j}]" for j in range(P)])
ax.set_ylabel("sd(q) / exact sd")
ax.set_ylim(0, 1.35)
ax.set_title("full batch and minibatches")
ax.legend(ncol=3, loc="lower center");"""),
    ("markdown", """What to take from it: with the regression update and passes over the data,
minibatches give q the full-data posterior's spread and, once averaged over a few passes,
its centre; a pass of small minibatches costs more than one full-batch step (more
Python per row), so minibatches pay when a full batch does not fit in memory or time.
The regression covers groups whose q families have natural parameters (Normal on any
coordinate, LogNormal, Gamma, InverseGamma) and K >= 2 (their statistics + 1), and
Normal or MultivariateNormal groups with fewer particles (a noisier score step); other
sites outside a subsampled plate (a Beta or Dirichlet q, say) keep the moment update,
whose spread comes out too wide, and `Inference` says so with a
`SubsampleWarning` that names them. Without `average_from` it warns too: the iterates
wander by about sqrt(lr N / (2 B)) posterior sds."""),
    ("markdown", """## 3. The memory budget and threads

A QEM step holds every site's log density over its particle dims at once, and the
contraction and its backward pass need a few copies of the largest. The sizes follow from
the shapes, so `Inference` computes them before the estimator allocates anything and
refuses a step whose estimate exceeds `max_memory` bytes (default: half the memory
available) with a `MemoryBudgetError` that names the largest factor. Here, a deliberately
too-large K = 2000 on minibatches of 10,000 rows, with a 256 MiB budget:"""),
    ("code", """rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
inference = Inference(model, AutoQEM(model), K=2000, lr=0.1, max_memory=256 * 2 ** 20)
start = time.perf_counter()
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SubsampleWarning)
        inference.step(X, y, 10_000)
except MemoryBudgetError as error:
    print(f"refused after {time.perf_counter() - start:.2f} s:\\n{error}")
rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"\\npeak resident memory of this process: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after")"""),
    ("markdown", """The first step checks lower bounds of the factors, computed from the model's structure
(each site's particle groups and plate sizes), before the model runs with K particles: a
refusal there means neither the factors nor the model's own K-particle tensors
(`X[idx] * beta`, K x B x P values here) were allocated. After every run a second check
uses the run's actual shapes. A model whose own intermediate tensors are much larger than
its factors can still outgrow the budget inside the model: choose K with that in mind.

Where the factors fit but the contraction's intermediates would not, the step is not
refused: one plate is contracted in chunks of its elements, backward pass included, with
the same answer. Three global latents that each meet a local one make a K x K x K x N
term out of K x K x N factors; here K = 16 and N = 2000 (65 MiB for that term in
float64), fitted whole and under a 40 MiB budget, from the same seed:"""),
    ("code", """def three_globals(y):
    zero = torch.zeros((), dtype=torch.float64)
    zs = [pyro.sample(f"z{i}", dist.Normal(zero, 1.0)) for i in range(3)]
    with pyro.plate("rows", y.shape[0]):
        a = pyro.sample("a", dist.Normal(zero, 1.0))
        for i, z in enumerate(zs):
            pyro.sample(f"y{i}", dist.Normal(z + a, 1.0), obs=y[:, i])


y3 = torch.randn(2000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
budget_losses = {}
for budget in [None, 40 * 2 ** 20]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    inference = Inference(three_globals, AutoQEM(three_globals), K=16, lr=0.3, max_memory=budget)
    start = time.perf_counter()
    budget_losses[budget] = [inference.step(y3) for _ in range(5)]
    label = "whole" if budget is None else f"{budget / 2 ** 20:.0f} MiB budget"
    print(f"{label:>14}: 5 steps in {time.perf_counter() - start:.2f} s, last -log P_hat "
          f"{budget_losses[budget][-1]:.6f}")
print("largest |difference| of -log P_hat over the 5 steps:",
      max(abs(a - b) for a, b in zip(*budget_losses.values())))"""),
    ("markdown", """The README gives the measured peak memory of chunked steps (`python -m
benchmarks.memory_chunks`): it stays near the budget when the allocator returns freed
blocks to the system (glibc keeps blocks below 32 MiB unless `MALLOC_MMAP_THRESHOLD_`
is set).

**Threads.** A step is a swarm of small tensor ops. `num_threads="auto"` (the default)
runs a step with one torch thread while its largest factor is below 2^20 entries (10^6
here) and leaves torch's setting otherwise; an int fixes the count. On a machine where
other processes are busy, extra threads wait on descheduled workers. Timed here, 30 full
batch steps each:"""),
    ("code", """import os

print(f"load average of this machine (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
torch.set_num_threads(2)  # what torch would use by default on this 2-core machine
thread_ms = {}
for setting in [1, 2, "auto"]:
    pyro.clear_param_store()
    inference = Inference(model, AutoQEM(model), K=10, lr=0.1, num_threads=setting)
    inference.step(X, y)  # set-up
    times = []
    for _ in range(30):
        start = time.perf_counter()
        inference.step(X, y)
        times.append(time.perf_counter() - start)
    thread_ms[str(setting)] = 1000 * np.median(times)
torch.set_num_threads(1)
for setting, ms in thread_ms.items():
    print(f"num_threads={setting!s:>6}: median {ms:.1f} ms/step")"""),
    ("markdown", """The 2-thread time depends on what else is running on the machine: in the runs made
while writing this notebook it went from somewhat faster than one thread to many times
slower, while the 1-thread time hardly moved. `"auto"` takes the 1-thread path for a
factor this small, and torch's own setting for factors of 2^20 entries or more."""),
    ("markdown", """## 4. The compiled step

`Inference(..., compile=...)` records one whole step (particle draws, log densities,
contraction, the backward pass for the weights, the moment update) as a graph of tensor
operations once the arguments' shapes have been seen, checks it once against the eager
step from the same random state, and then replays it: `"trace"` runs the recording as it
is (no Pyro handlers), `True` (or `"inductor"`) compiles it with `torch.compile`. The
same seed gives the same fit. Full-batch steps of the regression above, eager against
both, each from seed 0:"""),
    ("code", """def timed_fit(compile, steps=25):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    inference = Inference(model, AutoQEM(model), K=10, lr=0.1, compile=compile)
    losses, times = [], []
    for _ in range(steps):
        start = time.perf_counter()
        losses.append(inference.step(X, y))
        times.append(time.perf_counter() - start)
    compiled = inference.compiled
    return losses, times, (compiled.compile_seconds if compiled else 0.0)


runs = {mode: timed_fit(mode) for mode in [False, "trace", True]}
eager_ms = 1000 * np.median(runs[False][1][5:])
for mode, (losses, times, compile_s) in runs.items():
    ms = 1000 * np.median(times[5:])
    same = max(abs(a - b) for a, b in zip(losses, runs[False][0]))
    print(f"compile={mode!s:>5}: {ms:6.1f} ms/step ({ms / eager_ms:.2f}x eager), "
          f"recording and compiling {compile_s:4.1f} s, max |loss - eager loss| {same:.1e}")"""),
    ("markdown", """The `"trace"` fit is the eager fit bit for bit; the compiled one differs only by float
rounding in the last digits. Here the step is the likelihood of K x N = 10^6 logits, and
the compiled step fuses it; on small hierarchies, where a step is mostly Python, the
README's benchmark (`python -m benchmarks.compiled_step`) measures 0.12-0.21x the eager
step on radon and bus, and 0.49x on the movielens-shaped model. Compilation takes
seconds (less when torch's kernel cache on disk already holds the model's kernels), so it
pays for long fits and repeated fits of one model. Whatever the recording cannot cover
runs eagerly and says so once, e.g. minibatches:"""),
    ("code", """with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pyro.clear_param_store()
    inference = Inference(model, AutoQEM(model), K=10, lr=0.1, compile="trace")
    for _ in range(3):
        inference.step(X, y, 1000)
for w in caught:
    if w.category.__name__ == "CompileFallbackWarning":
        print(w.message)"""),
    ("markdown", """## 5. A fit across processes

`Inference(..., process_group=ProcessGroup(...))` fits one model across processes
(`pyro_qem.infer.distributed`, README "Distributed fits"). Each process holds its own
rows and declares them the ordinary Pyro way, `pyro.plate("data", N, subsample=rows)`,
so the model still runs under SVI or NUTS. Each step, rank 0's particles of the global
sites are broadcast, each process contracts its shard, and the plate-reduced terms are
summed by an all-reduce: every process gets the exact full-data `log P_hat` and the same
global q's. Nothing exchanged grows with the number of rows.

The script below is launched with `python -m torch.distributed.run --nproc_per_node 2
--standalone` (what `torchrun` runs), gloo backend, one thread per process, on a
regression of 20,000 rows with three global sites in one particle group. Run without
`torchrun` (argument `single`), the same script fits on one process with all the rows."""),
    ("code", """SCRIPT = '''
import json, sys, time
from pathlib import Path
import pyro, pyro.distributions as dist, torch, torch.distributed as tdist
from pyro_qem import AutoQEM, Inference
from pyro_qem.infer import ProcessGroup

torch.set_num_threads(1)
N, K, STEPS = 20_000, 10, 150


def model(x, y, rows):
    a = pyro.sample("a", dist.Normal(0.0, 5.0))
    b = pyro.sample("b", dist.Normal(0.0, 5.0))
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", N, subsample=rows):
        pyro.sample("y", dist.Normal(a + b * x, s), obs=y)


generator = torch.Generator().manual_seed(0)
x = torch.randn(N, generator=generator)
y = 1.0 + 2.0 * x + 0.5 * torch.randn(N, generator=generator)

distributed = sys.argv[1:] != ["single"]
if distributed:
    tdist.init_process_group("gloo")          # torchrun sets rank, world size, address
rank, world = (tdist.get_rank(), tdist.get_world_size()) if distributed else (0, 1)
rows = torch.arange(rank, N, world)           # this process's shard of 0..N-1

pyro.set_rng_seed(0)
guide = AutoQEM(model, groups=[["a", "b", "s"]])
group = ProcessGroup(timeout=60) if distributed else None
inference = Inference(model, guide, K=K, lr=0.1, average_from=STEPS // 2,
                      num_threads=1, process_group=group)
start = time.perf_counter()
for step in range(STEPS):
    before = (group.messages, group.bytes) if group else (0, 0)
    loss = inference.step(x[rows], y[rows], rows)
seconds = time.perf_counter() - start
sent = (group.messages - before[0], group.bytes - before[1]) if group else (0, 0)  # the last step's
Path(f"result_{world}_{rank}.json").write_text(json.dumps(dict(
    rank=rank, world=world, rows=len(rows), ms_per_step=1000 * seconds / STEPS, last_loss=loss,
    eval_loss=inference.evaluate_loss(x[rows], y[rows], rows),
    q={k: [q.mean.item(), q.stddev.item()] for k, q in guide.distributions().items()},
    messages_per_step=sent[0], bytes_per_step=sent[1])))
if distributed:
    tdist.barrier()                           # both done with every collective, then
    tdist.destroy_process_group()             # close gloo (without these it may abort at exit)
'''
workdir = Path(tempfile.mkdtemp())
(workdir / "fit.py").write_text(SCRIPT)


def launch(*command, results):
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *command], cwd=workdir, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        if not all((workdir / name).is_file() for name in results):
            raise RuntimeError(result.stdout + result.stderr)
        # Seen now and then on this machine: a rank aborts in gloo's teardown at exit,
        # after it has finished and written its result. Say so rather than hide it.
        aborted = [line for line in result.stderr.splitlines() if "terminate called" in line]
        print(f"note: exit status {result.returncode} after every process had written its result "
              f"({aborted[0] if aborted else result.stderr.splitlines()[-1]})")
    return time.perf_counter() - start


wall = launch("-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "fit.py",
              results=["result_2_0.json", "result_2_1.json"])
single_wall = launch("fit.py", "single", results=["result_1_0.json"])
ranks = [json.loads((workdir / f"result_2_{rank}.json").read_text()) for rank in range(2)]
single = json.loads((workdir / "result_1_0.json").read_text())
print(f"torchrun, 2 processes: {wall:.1f} s in all (process start-up included); "
      f"one process: {single_wall:.1f} s\\n")
for r in ranks + [single]:
    who = f"rank {r['rank']} of {r['world']}" if r["world"] > 1 else "single process"
    print(f"{who:>15}: {r['rows']} rows, {r['ms_per_step']:.1f} ms/step, last -log P_hat {r['last_loss']:.3f}, "
          f"evaluate_loss {r['eval_loss']:.3f}, {r['messages_per_step']} messages / {r['bytes_per_step']} bytes per step")
    print(" " * 17 + "q: " + ", ".join(f"{k} {m:.5f} +- {s:.5f}" for k, (m, s) in r["q"].items()))"""),
    ("code", """same_q = ranks[0]["q"] == ranks[1]["q"]
same_loss = ranks[0]["last_loss"] == ranks[1]["last_loss"] and ranks[0]["eval_loss"] == ranks[1]["eval_loss"]
print(f"both ranks: identical q: {same_q}; identical log P_hat (last step and evaluate_loss): {same_loss}")
print("two processes vs one process, difference of the q means in q sds:")
for site, (m, s) in ranks[0]["q"].items():
    m1, s1 = single["q"][site]
    print(f"  {site}: {(m - m1) / s1:+.2f} sd (sd ratio {s / s1:.2f})")"""),
    ("markdown", """The two processes end bit-for-bit equal. The single-process fit does not draw the same
particles as the two-process one, so it agrees with the two-process fit within Monte Carlo error, not exactly;
`tests/infer/test_distributed.py` checks that with the *same* particles the two agree to
1e-10 in float64.

At 20,000 rows a step is too cheap for two processes to pay off: the time goes to
per-step overheads and messages, not to rows. **Benchmark figures** (quoted from the
README section "Distributed fits", measured by `python -m benchmarks.distributed` on this
project's 2-core CPU machine; no results file is kept for it): the same regression with
1e6 rows, K = 10, one thread per process: one process 217-242 ms per step, two processes
190-210 ms (0.82-0.95x), on a machine shared with two other busy jobs; CPU time per step
96-109 ms per process against 226-234 ms for the single process (0.41-0.47x). One gloo
all-reduce between two processes took 85-210 microseconds up to 16 KB. Per step the
regression exchanges 5 messages, 168 bytes (the README's count, to compare with the
per-step count printed above). The README extends this to 8-64 processes as a model,
not a measurement."""),
    ("markdown", """## 6. What is not there yet

- **GPU.** One run on an H200 is in the README's Performance section (a 1e6-row
  logistic regression's compiled step at 0.25-0.45x a Pyro SVI step); the memory budget
  on a GPU, the NCCL path of the distributed fit and CUDA graphs
  (`compile="cudagraphs"`) are not tested or timed there yet.
- Minibatches fit sites outside the subsampled plate by regression where their q family
  has natural parameters (section 2); others (a Beta or Dirichlet q) keep a spread that
  comes out too wide, and a full-covariance q's score step is noisier than the diagonal
  fit. Row minibatches of a hierarchy whose groups' effects are averaged per group bias
  the global sites (README, Limitations). A
  distributed fit shards one plate only and does not support `optim` (README)."""),
]


NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_radon_indexed_groups.ipynb": RADON_INDEXED,
    "03_reparameterisation.ipynb": REPARAMETERISATION,
    "04_large_data.ipynb": LARGE_DATA,
    "05_guides_discrete_groups.ipynb": GUIDES_DISCRETE_GROUPS,
    "06_llm_evals.ipynb": LLM_EVALS,
}

def build(name: str, cells) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown"
                      else nbformat.v4.new_code_cell(src) for kind, src in cells]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    path = HERE / name
    nbformat.write(notebook, path)
    return path


if __name__ == "__main__":
    wanted = sys.argv[1:]
    for name, cells in NOTEBOOKS.items():
        if wanted and not any(name.startswith(w) for w in wanted):
            continue
        start = time.perf_counter()
        path = build(name, cells)
        print(f"{path} ({time.perf_counter() - start:.0f} s)")
