"""Set-up runs over subsampled plates: nested plates are walked through every
combination of chunks, sibling plates side by side."""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide.initialization import init_to_median

from pyro_qem.model import prototype_traces
from pyro_qem.model.discovery import _chunk_plan


def test_nested_plates_take_the_product_of_their_chunks():
    plan = _chunk_plan({"outer": 3, "inner": 2}, [frozenset({"outer", "inner"})])
    assert sorted((c["outer"], c["inner"]) for c in plan) == [(i, j) for i in range(3) for j in range(2)]


def test_sibling_plates_run_side_by_side():
    plan = _chunk_plan({"a": 3, "b": 2}, [])
    assert len(plan) == 3
    assert {c["a"] for c in plan} == {0, 1, 2} and {c["b"] for c in plan} == {0, 1}


def test_prototype_runs_visit_every_element_pair():
    def model():
        with pyro.plate("outer", 6, dim=-2, subsample_size=2):
            with pyro.plate("inner", 5, dim=-1, subsample_size=2):
                pyro.sample("z", dist.Normal(0.0, 1.0))

    runs = prototype_traces(model, (), {}, init_to_median)
    seen = set()
    for run in runs:
        i, j = run.indices["outer"], run.indices["inner"]
        seen |= {(a, b) for a in i.tolist() for b in j.tolist()}
    assert seen == {(a, b) for a in range(6) for b in range(5)}
    assert len(runs) == 3 * 3


def test_dependencies_are_recorded_through_reductions():
    def model():
        with pyro.plate("p", 3):
            x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(x.mean(), 1.0), obs=torch.tensor(0.0))

    runs = prototype_traces(model, (), {}, init_to_median)
    assert runs[0].dependencies["y"] == frozenset({"x"})
