import pyro
import pyro.distributions as dist
import torch

from pyro_qem import AutoQEM, Inference
from pyro_qem.estimator import estimate


def model(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 1.0))
    with pyro.plate("items", y.shape[0]):
        pyro.sample("obs", dist.Normal(mu, 0.3), obs=y)


def test_float64_weights_resolve_what_float32_weights_underflow():
    # Ten rows with noise sd 0.3: prior particles 2-3 sds of the prior from the data sit
    # 100-400 nats below the best, beyond float32's exp(-103) but not float64's exp(-745).
    torch.manual_seed(0)
    y = (0.3 + 0.3 * torch.randn(10)).float()
    pyro.set_rng_seed(0)
    inference = Inference(model, AutoQEM(model), K=30)
    run = inference.run_particles(y)
    narrow = estimate(run.sites, run.structure, 30)
    wide = estimate(run.sites, run.structure, 30, float64_weights=True)
    (w32,), (w64,) = narrow.weights().values(), wide.weights().values()
    assert w32.dtype == torch.float32 and w64.dtype == torch.float64
    assert (w32 == 0).any() and (w64 > 0).all()
    torch.testing.assert_close(wide.log_p_hat, narrow.log_p_hat.double(), rtol=1e-5, atol=0)
    torch.testing.assert_close(w64[w32 > 1e-30].float(), w32[w32 > 1e-30], rtol=1e-4, atol=0)
