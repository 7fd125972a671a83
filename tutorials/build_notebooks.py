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


NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "03_reparameterisation.ipynb": REPARAMETERISATION,
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
