"""The step's thread count: one thread for small steps under "auto", restored after."""

import pytest
import torch

from pyro_qem import AutoQEM, Inference
from pyro_qem.infer.threads import SMALL_FACTOR_ENTRIES, step_threads
from tests.helpers.models import normal_mean


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_auto_uses_one_thread_for_small_steps_and_restores_the_setting(two_threads):
    seen = []
    with step_threads("auto", 100):
        seen.append(torch.get_num_threads())
    with step_threads("auto", SMALL_FACTOR_ENTRIES):
        seen.append(torch.get_num_threads())
    with step_threads("auto", None):   # before the first run: torch's setting
        seen.append(torch.get_num_threads())
    with step_threads(None, 100):
        seen.append(torch.get_num_threads())
    assert seen == [1, 2, 2, 2] and torch.get_num_threads() == 2


def test_a_step_runs_with_the_chosen_threads_and_restores_them(two_threads, monkeypatch):
    y = torch.randn(20)
    inference = Inference(normal_mean, AutoQEM(normal_mean), K=10, num_threads=1)
    counts = []
    original = inference._step
    monkeypatch.setattr(inference, "_step", lambda a, k: counts.append(torch.get_num_threads()) or original(a, k))
    inference.step(y)
    assert counts == [1] and torch.get_num_threads() == 2


@pytest.mark.parametrize("bad", [0, -2, "many", 1.5, True])
def test_bad_thread_counts_are_errors(bad):
    with pytest.raises(ValueError, match="num_threads"):
        Inference(normal_mean, AutoQEM(normal_mean), K=10, num_threads=bad)
