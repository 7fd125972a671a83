"""The benchmark suite cannot rot: one tiny run of its command, and checks of its models
and metrics. The benchmarks themselves are not part of the test suite."""

import functools
import json
import math

import pytest
import torch

import pyro
import pyro.poutine as poutine
from pyro.poutine.util import site_is_subsample
from pyro_qem import AutoQEM, Inference

from benchmarks import compare, draw_cost, funnel, metrics, posteriors
from benchmarks.models import MODELS
from benchmarks.models.movielens import synthesise


def test_compare_command_runs_on_a_tiny_setting(tmp_path):
    compare.main(["--quick", "--models", "radon", "--steps", "4", "--svi-steps", "4",
                  "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    curves = results["models"]["radon"]["curves"]
    assert {c["config"]["method"] for c in curves} >= {"QEM", "SVI"}
    assert all(c["failed"] is None and len(c["pred_ll"]) > 0 for c in curves)
    assert (tmp_path / "table.md").read_text().count("| QEM K=10 lr=0.1 avg>2 |") == 2
    assert (tmp_path / "curves_radon.png").exists()


# Tiny settings stop long before convergence: the outputs' degenerate-weights
# warning is expected.
@pytest.mark.filterwarnings("ignore::pyro_qem.QEMDiagnosticWarning")
def test_hard_posteriors_command_runs_on_a_tiny_setting(tmp_path):
    posteriors.main(["--quick", "--posteriors", "flat_reg", "--methods", "qem,qem_recommended",
                     "--seeds", "0", "--out", str(tmp_path)])
    report = (tmp_path / "posteriors.md").read_text()
    assert "| flat_reg | QEM: joint draws |" in report and "QEM recommended" in report


# Tiny settings stop long before convergence: the outputs' degenerate-weights
# warning is expected.
@pytest.mark.filterwarnings("ignore::pyro_qem.QEMDiagnosticWarning")
def test_draw_cost_and_funnel_commands_run_on_a_tiny_setting(capsys):
    draw_cost.main(["--steps", "4", "--num-samples", "10"])
    funnel.main(["--seeds", "0", "--steps", "4", "--num-samples", "10", "--models", "slopes"])
    out = capsys.readouterr().out
    assert out.count("| eight schools") == 2 and out.count("| radon varying") == 2
    assert "| centred | 0 |" in out and "| non-centred by hand | 0 |" in out and "| noncentre='auto' | 0 |" in out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_data_and_sites(name):
    bm = MODELS[name]
    train, test = bm.load("cpu")
    assert {k: v.shape for k, v in train.items()} == {k: v.shape for k, v in test.items()}
    trace = poutine.trace(bm.model).get_trace(train)
    latent = {n for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]}
    assert {s for group in bm.groups for s in group} | {bm.rescaled_site} <= latent
    assert max(-f.dim for s in trace.nodes.values() for f in s.get("cond_indep_stack", ())) \
        == bm.max_plate_nesting


@pytest.mark.parametrize("name", sorted(MODELS))
def test_rescaled_log_density_equals_original_up_to_the_jacobian(name):
    bm = MODELS[name]
    train, _ = bm.load("cpu")
    c = bm.rescale
    original = poutine.trace(bm.model).get_trace(train)
    values = {n: s["value"] for n, s in original.nodes.items()
              if s["type"] == "sample" and not s["is_observed"]}
    values[bm.rescaled_site] = values[bm.rescaled_site] / c
    rescaled_model = poutine.condition(functools.partial(bm.model, c=c), values)
    rescaled = poutine.trace(rescaled_model).get_trace(train)
    jacobian = values[bm.rescaled_site].numel() * math.log(c)
    difference = rescaled.log_prob_sum().double() - original.log_prob_sum().double()
    assert difference.item() == pytest.approx(jacobian, rel=1e-4)


def test_movielens_synthetic_data_is_fixed_and_sparse():
    x, rating = synthesise()
    x2, rating2 = synthesise()
    assert (x == x2).all() and (rating == rating2).all()
    assert x.shape == (300, 10, 18) and rating.shape == (300, 10)
    assert 0.08 < x.mean() < 0.12


def test_predictive_loglik_of_a_near_point_mass_is_the_test_likelihood():
    bm = MODELS["radon"]
    train, test = bm.load("cpu")
    trace = poutine.trace(bm.model).get_trace(train)
    posterior = {n: pyro.distributions.Normal(s["value"], 1e-6)
                 for n, s in trace.nodes.items()
                 if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)}
    values = {n: q.loc for n, q in posterior.items()}
    exact = poutine.trace(poutine.condition(bm.model, values)).get_trace(test)
    expected = exact.nodes["log_radon"]["fn"].log_prob(test["log_radon"]).sum().item()
    got = metrics.predictive_loglik(bm.model, test, posterior, bm.max_plate_nesting, 10)
    assert got["pred_ll"] == pytest.approx(expected, abs=1e-2)
    assert got["pred_ll_joint"] == pytest.approx(expected, abs=1e-2)


def test_pointwise_and_joint_predictive_scores():
    # Two draws, two observations: p = (0.5, 0.1) under draw 1 and (0.1, 0.5) under draw 2.
    p = torch.tensor([[0.5, 0.1], [0.1, 0.5]], dtype=torch.float64)
    scores = metrics.predictive_scores(p.log())
    assert scores["pred_ll"] == pytest.approx(2 * math.log(0.3))
    assert scores["pred_ll_joint"] == pytest.approx(math.log(0.05))


def test_log_p_hat_of_a_qem_posterior_matches_the_engine():
    bm = MODELS["radon"]
    train, _ = bm.load("cpu")
    guide = AutoQEM(bm.model, groups=bm.groups, noncentre=None)
    inference = Inference(bm.model, guide, K=10, lr=0.1)
    for _ in range(3):
        inference.step(train)
    evaluator = metrics.LogPHat(bm.model, train, bm.groups, K=10)
    pyro.set_rng_seed(1)
    ours = evaluator(guide.distributions())
    pyro.set_rng_seed(1)
    engine = -inference.evaluate_loss(train)
    assert ours == pytest.approx(engine, abs=1e-3)
    assert torch.isfinite(torch.tensor(ours))


def test_seeds_command_runs_on_a_tiny_setting(tmp_path):
    from benchmarks import seeds

    compare.main(["--quick", "--models", "radon", "--steps", "4", "--svi-steps", "4",
                  "--no-rescaled", "--out", str(tmp_path)])
    text = seeds.main(["--seeds", "2", "--models", "radon", "--steps", "4", "--svi-steps", "4",
                       "--results", str(tmp_path / "results.json"), "--compile", "trace"])
    assert text.count("| SVI | SVI lr=0.03 |") == 2 and "median time ratio" in text
    assert text.count("compile=trace |") == 2
    assert (tmp_path / "seeds.md").read_text() == text


def test_compiled_step_command_prints_its_table(capsys):
    from benchmarks import compiled_step

    compiled_step.main(["--models", "radon", "--K", "5", "--repeats", "4", "--modes", "trace",
                        "--warm-cache"])
    out = capsys.readouterr().out
    assert "| radon | eager |" in out and "| radon | trace |" in out


def test_evaluation_steps_put_the_final_window_in_the_last_fifth():
    from benchmarks.runner import evaluation_steps
    from benchmarks.summary import FINAL_WINDOW

    steps = evaluation_steps(200, 20)
    assert steps[0] == 1 and steps[-FINAL_WINDOW:] == [160, 180, 200]


# Tiny settings stop long before convergence: the outputs' degenerate-weights
# warning is expected.
@pytest.mark.filterwarnings("ignore::pyro_qem.QEMDiagnosticWarning")
def test_scale_accuracy_quick_run_prints_its_table():
    from benchmarks import scale_accuracy

    rows = scale_accuracy.main(["--quick"])
    assert {r["method"] for r in rows} == {"QEM K=10", "QEM K=30", "SVI AutoNormal",
                                            "SVI AutoMultivariateNormal",
                                            "QEM K=30 update=auto", "QEM K=30 update=auto, 120 steps"}
    assert all(r["q"]["sd_min"] > 0 for r in rows)


def test_scale_speed_command_prints_its_table(capsys):
    from benchmarks import scale_speed

    rows = scale_speed.main(["--rows", "2000", "--K", "4", "--repeats", "4", "--no-compile"])
    assert {row["method"] for row in rows} == {"QEM eager", "SVI"}
    assert all(row["ms"] > 0 for row in rows)
    assert "| 2e+03 | 5 | 4 | SVI |" in capsys.readouterr().out


def test_gpu_preflight_runs_on_the_cpu(capsys):
    from benchmarks import gpu_preflight

    assert gpu_preflight.main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.count("ok   ") == 9


def test_compare_selected_grid_is_the_recommended_qem_against_svi():
    labels = [config.label for config in compare.method_grid(False, 200, selected=True)]
    assert labels == ["QEM K=30 lr=0.1 avg>100", "QEM K=30 lr=0.1 avg>100 compile=inductor",
                      "SVI lr=0.01", "SVI lr=0.03"]


def test_reference_ess_matches_pyro_and_is_infinite_for_constant_coordinates():
    """The references' own ESS (Pyro's needs memory quadratic in the draws) gives
    Pyro's values on an AR(1) chain, and a constant coordinate (a Cholesky factor's
    fixed entries) has no Monte Carlo error."""
    from pyro.ops.stats import effective_sample_size as pyro_ess

    from benchmarks.reference import effective_sample_size

    generator = torch.Generator().manual_seed(0)
    chain = torch.zeros(2000, 3, dtype=torch.float64)
    for i in range(1, 2000):
        chain[i] = 0.8 * chain[i - 1] + torch.randn(3, generator=generator, dtype=torch.float64)
    chain[:, 2] = 1.0
    ours = effective_sample_size(chain)
    assert torch.allclose(ours[:2], pyro_ess(chain[:, :2].unsqueeze(0)), rtol=1e-9)
    assert math.isinf(ours[2].item())
