"""Write the tutorial notebooks from their cell sources and execute them in place.

    python tutorials/build_notebooks.py

Keeping the sources here makes the notebooks reviewable as code; the test suite
executes the notebooks themselves (tests/test_tutorials.py).
"""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).parent

QUICKSTART = [
    ("markdown", """# QEM quickstart: eight schools

This notebook fits the classic eight-schools hierarchy with `pyro_qem`, looks at the
posterior through its outputs and ArviZ, and runs Pyro's own SVI on the same model side by
side. It takes well under a minute on a laptop CPU."""),
    ("code", """import time
import warnings

import arviz as az
import matplotlib
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_qem import AutoQEM, Inference, sample_guide, sample_posterior, to_inference_data

matplotlib.use("Agg")
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
    print(build("01_quickstart.ipynb", QUICKSTART))
