import doctest
import importlib
import pathlib

import matplotlib
import pandas as pd
import pytest

from pyro_qem import evals
from pyro_qem.evals.cli import main

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CSV = pathlib.Path(__file__).parent / "data" / "results.csv"
MODULES = ["intervals", "comparisons", "clustered", "paired", "metrics", "plotting", "_bvn"]


@pytest.mark.parametrize("name", MODULES + [""])
def test_docstring_examples(name):
    module = importlib.import_module("pyro_qem.evals" + (f".{name}" if name else ""))
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_cli_prints_tables(capsys, tmp_path):
    out_png = tmp_path / "intervals.png"
    args = [str(CSV), "--index-column", "question", "--cluster-column", "task", "--plot", str(out_png)]
    assert main(args) == 0
    text = capsys.readouterr().out
    for expected in ("gpt-x", "claude-y", "llama-z", "bayes_lower", "clustered_upper", "P(row model", "p_best"):
        assert expected in text
    assert out_png.stat().st_size > 0


def test_cli_paired_and_alpha(capsys):
    assert main([str(CSV), "--index-column", "question", "--cluster-column", "task", "--paired", "--alpha", "0.1"]) == 0
    text = capsys.readouterr().out
    assert "90% intervals" in text and "paired model" in text


def test_cli_reports_bad_input(capsys):
    with pytest.raises(SystemExit) as info:
        main([str(CSV)])  # the question column is not a model
    assert info.value.code == 2
    assert "Column 'question'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(CSV), "--index-column", "question", "--cluster-column", "task", "--alpha", "2"])
    assert "`alpha` must be in (0, 1)" in capsys.readouterr().err


def test_plots_return_figure_and_axes(tmp_path):
    df = pd.read_csv(CSV, index_col="question").drop(columns="task")
    fig, ax = evals.plot_intervals(df, evals.independent_intervals(df), filename=tmp_path / "a.png")
    assert ax.get_title() == "Model accuracy" and len(ax.patches) == 3
    fig2, ax2 = evals.plot_comparisons(evals.independent_comparisons(df), title="cmp")
    assert ax2.get_title() == "cmp"
    _, given = plt.subplots()
    assert evals.plot_intervals(df, evals.wilson_intervals(df), ax=given)[1] is given
    with pytest.raises(ValueError, match="lacks rows"):
        evals.plot_intervals(df, evals.independent_comparisons(df))
    plt.close("all")
