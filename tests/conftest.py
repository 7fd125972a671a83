import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_state():
    """Every test starts with an empty param store and a fixed seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch.set_default_dtype(torch.float32)
    yield
    pyro.clear_param_store()


def pytest_configure(config):
    # The suite's tensors are small: one intra-op thread avoids OpenMP contention on
    # a busy 2-core machine (measured: 10-100x slower small ops with 2 threads under load).
    torch.set_num_threads(1)
