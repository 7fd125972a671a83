"""The guide owns its fit: several guides in one process, torch.save of a guide,
state dicts, and the param store (round trip, clearing, stale and foreign state)."""

import gc
import io
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

from pyro_qem import AutoQEM, Inference, StateCollisionError
from tests.helpers.models import normal_mean, normal_mean_posterior, radon_data, radon_like

REPO = Path(__file__).resolve().parents[2]


def data(seed, n=20, loc=0.8):
    generator = torch.Generator().manual_seed(seed)
    return loc + torch.randn(n, generator=generator, dtype=torch.float64)


def fit(guide, *args, steps=300, average_from=150):
    inference = Inference(normal_mean, guide, K=30, lr=0.1, average_from=average_from)
    for _ in range(steps):
        inference.step(*args)
    return inference


def check_exact(guide, y, prior_scale):
    """Averaged q against the exact N(m, s^2) posterior. Averaging 150 iterates, each a
    moving average over ~1/lr = 10 steps of K = 30 weighted particles (ESS ~ 10-20),
    leaves a Monte Carlo error of about s / sqrt(150 / 10 * 15) ~ 0.07 s in the mean
    and ~7% in the sd; the tolerances are about 3 of those."""
    mean, sd = normal_mean_posterior(y, prior_scale)
    q = guide.distributions()["z"]
    assert abs(q.mean.item() - mean) < 0.25 * sd
    assert abs(q.stddev.item() / sd - 1) < 0.2


def test_two_default_prefixed_guides_each_give_their_exact_posterior():
    """Same site name, different data and priors, averaging on: B must not start from
    A's posterior or share its update counter (which would start B's averaging at once)."""
    y_a, y_b = data(0, n=20, loc=0.8), data(1, n=5, loc=-2.0)
    guide_a, guide_b = AutoQEM(normal_mean), AutoQEM(normal_mean)
    fit(guide_a, y_a, 1.0)
    fit(guide_b, y_b, 3.0)
    assert guide_a.prefix == "AutoQEM" and guide_b.prefix == "AutoQEM_2"
    assert guide_a.state.num_updates() == guide_b.state.num_updates() == 300
    check_exact(guide_a, y_a, 1.0)
    check_exact(guide_b, y_b, 3.0)


def test_interleaved_steps_of_two_guides_do_not_interact():
    y_a, y_b = data(2), data(3, loc=-1.0)
    guide_a, guide_b = AutoQEM(normal_mean), AutoQEM(normal_mean)
    inf_a = Inference(normal_mean, guide_a, K=30, lr=0.1, average_from=150)
    inf_b = Inference(normal_mean, guide_b, K=30, lr=0.1, average_from=150)
    for _ in range(300):
        inf_a.step(y_a)
        inf_b.step(y_b)
    check_exact(guide_a, y_a, 1.0)
    check_exact(guide_b, y_b, 1.0)


def test_an_explicit_prefix_in_use_is_an_error():
    y = data(0)
    first = AutoQEM(normal_mean, prefix="fit")
    first.setup(y)
    other = AutoQEM(normal_mean, prefix="fit")
    with pytest.raises(StateCollisionError, match="prefix='fit'"):
        other.setup(y)
    assert first.prefix == "fit"


def test_state_of_a_guide_that_is_gone_is_not_adopted():
    y = data(0, loc=3.0)
    guide = AutoQEM(normal_mean)
    fit(guide, y, steps=50, average_from=None)
    assert guide.distributions()["z"].mean.item() > 2.0
    del guide
    gc.collect()
    fresh = AutoQEM(normal_mean)
    fresh.setup(y)
    assert fresh.prefix == "AutoQEM"
    # Initialised from the prior N(0, 1), not from the old posterior near 3.
    assert abs(fresh.distributions()["z"].mean.item()) < 0.2
    assert fresh.state.num_updates() == 0


def test_foreign_state_of_another_shape_names_the_site():
    store = pyro.get_param_store()
    store.setdefault("AutoQEM.z.z", torch.zeros(3, dtype=torch.float64))
    store.setdefault("AutoQEM.z2.z", torch.ones(3, dtype=torch.float64))
    with pytest.raises(StateCollisionError, match="Site 'z'.*prefix="):
        AutoQEM(normal_mean).setup(data(0))


def test_clearing_the_param_store_does_not_lose_the_fit():
    y = data(0)
    guide = AutoQEM(normal_mean)
    inference = fit(guide, y, steps=20, average_from=None)
    before = guide.distributions()["z"].mean.item()
    pyro.clear_param_store()
    assert guide.distributions()["z"].mean.item() == before
    inference.step(y)
    assert guide.state.num_updates() == 21
    assert "AutoQEM.z.z" in pyro.get_param_store()


def test_state_dict_round_trip_continues_exactly():
    x, y = radon_data(torch.float32)
    guide = AutoQEM(radon_like)
    inference = Inference(radon_like, guide, K=10, lr=0.2)
    for _ in range(10):
        inference.step(x, y)
    saved = guide.state_dict()
    rng = torch.get_rng_state()
    expected = [inference.step(x, y) for _ in range(3)]
    restored = AutoQEM(radon_like)
    restored.load_state_dict(saved)
    torch.set_rng_state(rng)
    again = Inference(radon_like, restored, K=10, lr=0.2)
    assert [again.step(x, y) for _ in range(3)] == expected
    assert restored.state.num_updates() == 13


def test_load_state_dict_rejects_another_models_state():
    guide = AutoQEM(normal_mean)
    guide.setup(data(0))
    x, y = radon_data(torch.float32)
    other = AutoQEM(radon_like)
    other.setup(x, y)
    with pytest.raises(ValueError, match="no state for site 'global_mean'"):
        other.load_state_dict(guide.state_dict())
    with pytest.raises(TypeError, match="state_dict"):
        other.load_state_dict({"z.z": torch.zeros(())})


SCRIPT = """
import sys, torch
sys.path.insert(0, {repo!r})
saved = torch.load({path!r}, weights_only=False)
from pyro_qem import Inference
from tests.helpers.models import radon_data, radon_like
x, y = radon_data(torch.float32)
torch.set_rng_state(saved["rng"])
inference = Inference(radon_like, saved["guide"], K=10, lr=0.2)
print(repr([inference.step(x, y) for _ in range(3)]))
"""


@pytest.mark.slow
def test_torch_save_of_a_guide_continues_exactly_in_a_fresh_process(tmp_path):
    x, y = radon_data(torch.float32)
    guide = AutoQEM(radon_like)
    inference = Inference(radon_like, guide, K=10, lr=0.2)
    for _ in range(10):
        inference.step(x, y)
    path = tmp_path / "guide.pt"
    torch.save({"guide": guide, "rng": torch.get_rng_state()}, path)
    expected = [inference.step(x, y) for _ in range(3)]
    script = SCRIPT.format(repo=str(REPO), path=str(path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert eval(result.stdout.strip()) == expected


def test_a_param_store_round_trip_keeps_the_running_average(tmp_path):
    """A new guide that adopts a fit from a loaded param store adopts its running
    average too: its q (median, quantiles, sample_guide) is the averaged fit, not the
    last iterate (with few particles and a large lr those differed by more than a
    posterior sd)."""
    y = data(2)
    pyro.set_rng_seed(0)
    guide = AutoQEM(normal_mean)
    inference = fit(guide, y)
    fitted = guide.median()["z"]
    assert not torch.allclose(fitted, guide.distributions(averaged=False)["z"].mean.double())
    pyro.get_param_store().save(tmp_path / "params.pt")
    del guide, inference
    gc.collect()
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    restored = AutoQEM(normal_mean)
    restored.setup(y)
    assert torch.equal(restored.median()["z"], fitted)


def test_reading_a_loaded_fit_before_set_up_says_to_pass_the_model_arguments():
    y = data(3)
    pyro.set_rng_seed(0)
    guide = AutoQEM(normal_mean)
    fit(guide, y, steps=5, average_from=None)
    saved = guide.state_dict()
    fresh = AutoQEM(normal_mean, prefix="fresh")
    fresh.load_state_dict(saved)
    with pytest.raises(TypeError, match=r"guide.median\(\): the guide has not been set up.*guide.setup\(y\)"):
        fresh.median()
    with pytest.raises(TypeError, match=r"quantiles must be a list of probabilities"):
        fresh.quantiles(0.5, y)
    assert torch.equal(fresh.median(y)["z"], guide.median()["z"])


def test_a_loaded_guide_keeps_its_names_when_a_new_guide_is_created_after_it():
    """torch.load of a saved guide, then a new guide of the same model: the loaded one
    claims its prefix on loading, so the new one takes the next free prefix (it used
    to take the loaded guide's names and lock it out with StateCollisionError)."""
    y = data(0)
    guide = AutoQEM(normal_mean)
    inference = Inference(normal_mean, guide, K=10)
    for _ in range(5):
        inference.step(y)
    buffer = io.BytesIO()
    torch.save(guide, buffer)
    median = guide.median(y)["z"].clone()
    del guide, inference
    gc.collect()
    pyro.clear_param_store()
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.prefix == "AutoQEM"
    fresh = AutoQEM(normal_mean)
    Inference(normal_mean, fresh, K=10).step(y)
    assert fresh.prefix == "AutoQEM_2"
    assert torch.equal(loaded.median(y)["z"], median)
    Inference(normal_mean, loaded, K=10).step(y)
    assert loaded.state.num_updates() == 6 and fresh.state.num_updates() == 1
