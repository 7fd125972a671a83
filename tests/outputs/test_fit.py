"""The fit loop: progress bar, early stopping, history and its plot."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from tests.helpers.fitted_models import hierarchy, hierarchy_data  # noqa: E402
from pyro_qem import AutoQEM, Inference  # noqa: E402
from pyro_qem.infer.fit import FitHistory, fit  # noqa: E402


def make_inference():
    return Inference(hierarchy, AutoQEM(hierarchy), K=10, lr=0.2)


def test_fit_records_history_and_shows_progress(capsys):
    inference = make_inference()
    history = inference.fit(hierarchy_data(), num_steps=40)
    assert len(history) == 40 and len(history.seconds) == 40 and len(history.smoothed) == 40
    assert not history.stopped_early and all(s >= 0 for s in history.seconds)
    assert history.losses[-1] < history.losses[0]
    assert "loss" in capsys.readouterr().err
    more = fit(inference, hierarchy_data(), num_steps=5, progress_bar=False, history=history)
    assert more is history and len(history) == 45


def test_early_stopping_after_patience_steps_without_improvement():
    inference = make_inference()
    # No change of the smoothed loss beats a tolerance of 1e9 nats: the first step sets
    # the best value and the fit stops `patience` steps later.
    history = fit(inference, hierarchy_data(), num_steps=100, progress_bar=False, tol=1e9,
                  patience=5)
    assert history.stopped_early and len(history) == 6


def test_plain_loop_history_and_plot():
    inference = make_inference()
    history = FitHistory()
    for _ in range(10):
        history.record(inference.step(hierarchy_data()))
    ax = history.plot(log_scale=True)
    assert len(ax.get_lines()) == 2 and ax.get_xscale() == "log"
    plt.close("all")


@pytest.mark.parametrize("kwargs, match", [
    ({"num_steps": 0}, "num_steps must be a positive int"),
    ({"tol": -1.0}, "tol must be a non-negative number"),
    ({"patience": 0}, "patience must be a positive int"),
])
def test_fit_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(make_inference(), hierarchy_data(), progress_bar=False, **kwargs)
    with pytest.raises(ValueError, match="smoothing must be in"):
        FitHistory(smoothing=0.0)
