"""Each effect handler on its own, on tiny models."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from pyro_qem.handlers import (ParamCollector, PlateChunkMessenger, SiteRecorder, UnconditionData,
                               is_subsampled)


def model(y=None):
    scale = pyro.param("scale", torch.tensor(1.0))
    mu = pyro.sample("mu", dist.Normal(0.0, scale))
    with pyro.plate("data", 10, subsample_size=4) as index:
        pyro.deterministic("shifted", mu + 1.0)
        obs = None if y is None else y.index_select(0, index)
        return pyro.sample("y", dist.Normal(mu, 1.0), obs=obs)


def test_recorder_keeps_every_site_with_its_frames_and_the_minibatch():
    y = torch.arange(10.0)
    with SiteRecorder() as recorder:
        model(y)
    records = {r.name: r for r in recorder.sites}
    assert list(records) == ["mu", "shifted", "y"]
    assert records["shifted"].is_deterministic and not records["mu"].is_deterministic
    assert records["y"].is_observed and records["y"].draw is None
    (frame,) = records["y"].frames
    assert frame.name == "data" and is_subsampled(frame)
    index = recorder.subsamples["data"]
    assert torch.equal(records["y"].value, y[index])
    assert set(recorder.params) == {"scale"}


def test_param_collector_returns_the_unconstrained_leaves():
    with ParamCollector() as collector:
        model()
    assert collector.params["scale"] is pyro.get_param_store()._params["scale"]


def test_plate_chunks_cover_every_element_once_per_pass():
    seen = []
    for chunk in range(3):
        chunker = PlateChunkMessenger(chunk)
        with chunker:
            model()
        seen.append(chunker.indices["data"])
        assert chunker.num_chunks["data"] == 3
    assert set(torch.cat(seen).tolist()) == set(range(10))
    assert torch.equal(seen[0], torch.arange(4))


def test_uncondition_data_samples_observed_sites_and_keeps_deterministic_ones():
    y = torch.full((10,), 100.0)
    trace = poutine.trace(UnconditionData()(model)).get_trace(y)
    site = trace.nodes["y"]
    assert not site["is_observed"] and site["infer"]["was_observed"]
    assert site["value"].abs().max() < 50  # drawn from the model, not the data
    assert trace.nodes["shifted"]["infer"].get("_deterministic")
