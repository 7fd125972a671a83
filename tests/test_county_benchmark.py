"""The county benchmark (indexed-group radon models, padded vs ragged cost, synthetic
scale) runs end to end on a tiny setting and writes its table."""

import json

import pytest
import torch

import pyro
from pyro_qem import AutoQEM, Inference

from benchmarks import county
from benchmarks.models.county import (COUNTY_MODELS, padded_grid, padded_intercepts,
                                      radon_args, varying_intercepts)


@pytest.mark.slow
# The quick setting stops long before convergence: the outputs' degenerate-weights
# warning is expected.
@pytest.mark.filterwarnings("ignore::pyro_qem.QEMDiagnosticWarning")
def test_county_quick_run_writes_its_tables(tmp_path):
    text = county.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "county.md").read_text() == text
    for title in ("varying intercepts", "varying intercepts and slopes",
                  "correlated intercepts and slopes (LKJ)"):
        assert f"### {title}\n" in text
    assert text.count("| QEM K=10 lr=0.1 avg>10 |") == 4  # three radon models + synthetic
    assert "| indexed (919 rows) |" in text and "| padded (85 x 116 grid, mask) |" in text
    report = json.loads((tmp_path / "county.json").read_text())
    assert all(r["failed"] is None for m in report["models"].values() for r in m["results"])
    cost = report["cost"]
    assert cost["indexed (919 rows)"]["largest_shape"] == [10, 10, 919]
    assert cost["padded (85 x 116 grid, mask)"]["largest_shape"] == [10, 10, 85, 116]


def test_padded_grid_holds_every_house_once():
    floor, county_index, y = radon_args()
    floor_grid, y_grid, mask = padded_grid(floor, county_index, y)
    assert mask.shape == (85, 116) and int(mask.sum()) == 919
    assert torch.equal(mask.sum(1), torch.bincount(county_index, minlength=85))
    assert torch.allclose(y_grid[mask].sort().values, y.sort().values)
    assert torch.allclose((y_grid * mask).sum(1),
                          torch.zeros(85).index_add_(0, county_index, y))


def test_padded_and_indexed_models_have_the_same_log_density():
    floor, county_index, y = radon_args()
    trace = pyro.poutine.trace(varying_intercepts).get_trace(floor, county_index, y)
    values = {n: s["value"] for n, s in trace.nodes.items()
              if s["type"] == "sample" and not s["is_observed"]}
    values["a"] = values["a"].unsqueeze(-1)  # the county plate is dim -2 in the grid
    padded = pyro.poutine.trace(pyro.poutine.condition(padded_intercepts, values)).get_trace(
        *padded_grid(floor, county_index, y))
    assert padded.log_prob_sum().item() == pytest.approx(trace.log_prob_sum().item(), rel=1e-5)


@pytest.mark.parametrize("name", sorted(COUNTY_MODELS))
def test_county_models_take_a_qem_step_and_their_nuts_twins_share_the_sites(name):
    cm = COUNTY_MODELS[name]
    args = radon_args()
    inference = Inference(cm.model, AutoQEM(cm.model, groups=cm.groups), K=5, lr=0.1)
    assert torch.isfinite(torch.tensor(inference.step(*args)))

    original = pyro.poutine.trace(cm.model).get_trace(*args).nodes
    twin = pyro.poutine.trace(cm.nuts_model).get_trace(*args).nodes
    for site, node in original.items():
        if node["type"] == "sample" and not node["is_observed"]:  # NUTS's draws hold it
            assert twin[site]["value"].shape == node["value"].shape
