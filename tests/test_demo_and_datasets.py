"""The bundled data sets and the demo command."""

import pytest
import torch

from pyro_qem import datasets
from pyro_qem.demo import main


def test_radon_shapes():
    data = datasets.load_radon()
    assert set(data) == {"log_radon", "basement", "log_uranium"}
    assert all(v.shape == (4, 300) and v.dtype == torch.float32 for v in data.values())


def test_bus_breakdown_is_bundled():
    arrays = datasets.load("bus_breakdown")
    assert arrays["delay_train_0"].shape == (2, 3, 150)


def test_unknown_data_set():
    with pytest.raises(ValueError, match="No bundled data set 'nope'; available: radon"):
        datasets.load("nope")


def test_demo_prints_a_summary(capsys):
    main(["--steps", "20", "--K", "5"])
    out = capsys.readouterr().out
    assert "QEM on radon" in out and "ms/step" in out
    assert out.count("state_mean") == 4 and "global_mean" in out
