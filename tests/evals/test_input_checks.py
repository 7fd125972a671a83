"""Input checks: 0/1 scores in object columns, and the command line's handling of bad files."""

import pathlib

import numpy as np
import pandas as pd
import pytest

from pyro_qem import evals
from pyro_qem.evals.cli import main, summary_tables

CSV = pathlib.Path(__file__).parent / "data" / "results.csv"
PLAIN = pd.DataFrame({"a": [1, 1, 1, 0, 1], "b": [1, 0, 1, 0, 0]})


# --- 0/1 scores stored with object dtype -------------------------------------------------


@pytest.mark.parametrize(
    "df",
    [
        PLAIN.astype(object),
        pd.DataFrame({"a": [1, 1.0, True, "0", "1"], "b": [1, "0", 1.0, False, 0]}),
        pd.DataFrame({"a": [1, 1, 1, 0, 1], "b": [True, False, True, False, False]}, dtype=object),
        PLAIN.astype(str),
    ],
)
def test_object_columns_of_scores_are_accepted(df):
    pd.testing.assert_frame_equal(evals.independent_intervals(df), evals.independent_intervals(PLAIN))
    pd.testing.assert_frame_equal(evals.interval_table(df), evals.interval_table(PLAIN))


def test_object_column_from_lists_with_none():
    df = pd.DataFrame({"a": [1, 1, None, 1, 0, 1], "b": [1, 0, "x", 1, 0, 0]})
    with pytest.raises(ValueError, match=r"Column 'a' .* 1 missing value.*drop or fill"):
        evals.independent_intervals(df)
    kept = df.drop(index=2).reset_index(drop=True)
    assert kept["b"].dtype == object
    pd.testing.assert_frame_equal(evals.independent_intervals(kept), evals.independent_intervals(PLAIN))


def test_object_column_with_other_values_names_column_and_values():
    df = pd.DataFrame({"a": [1, 0, 1], "b": [1, "yes", "no"]})
    with pytest.raises(
        TypeError,
        match=r"Column 'b' of `df` has dtype object and 2 value\(s\) that are not 0/1 scores, "
        r"e\.g\. 'yes', 'no'; expected 0/1 scores .*strings '0'/'1'.*map its values to 0/1",
    ):
        evals.independent_intervals(df)


def test_object_column_with_partial_credit_is_a_value_error():
    df = pd.DataFrame({"a": [1, 0, 0.5]}, dtype=object)
    with pytest.raises(ValueError, match=r"Column 'a' .* non-binary values \[0.5\].*Threshold"):
        evals.independent_intervals(df)


def test_label_column_keeps_cluster_and_index_advice():
    df = pd.DataFrame({"q": ["q1", "q2", "q3"], "a": [1, 0, 1]})
    with pytest.raises(TypeError, match=r"Column 'q' .*'q1', 'q2', 'q3'.*--cluster-column.*--index-column"):
        evals.independent_intervals(df)


def test_confusion_counts_accept_object_scores():
    y = np.array([1, "1", 0, False], dtype=object)
    assert evals.confusion_counts(y, [1, 0, 1, 0]) == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    with pytest.raises(TypeError, match=r"`y_pred` has dtype object .* e\.g\. 'maybe'.*Map its values"):
        evals.confusion_counts([1, 0], np.array([1, "maybe"], dtype=object))


# --- command line: unknown columns -------------------------------------------------------


def _cli_error(capsys, args):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_cli_unknown_cluster_column(capsys):
    line = _cli_error(capsys, [CSV, "--index-column", "question", "--cluster-column", "Task"])
    assert "--cluster-column 'Task' is not a column" in line
    assert "available columns: 'task', 'gpt-x', 'claude-y', 'llama-z'" in line


def test_cli_unknown_index_column(capsys):
    line = _cli_error(capsys, [CSV, "--index-column", "Question", "--cluster-column", "task"])
    assert "--index-column 'Question' is not a column" in line
    assert "available columns: 'question', 'task', 'gpt-x'" in line


def test_summary_tables_unknown_cluster_column_is_value_error():
    df = pd.read_csv(CSV, index_col="question")
    with pytest.raises(ValueError, match=r"--cluster-column 'nope' is not a column.*available columns: 'task'"):
        summary_tables(df, "nope", paired=False, alpha=0.05)


# --- command line: file layout -----------------------------------------------------------


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


SEMI = "question;task;a;b\nq1;t1;1;0\nq2;t1;0;1\nq3;t2;1;1\nq4;t2;1;0\n"


@pytest.mark.parametrize("sep, label", [(";", "semicolon"), ("\t", "tab")])
def test_cli_detects_other_separators(capsys, tmp_path, sep, label):
    path = _write(tmp_path, "r.csv", SEMI.replace(";", sep))
    assert main([str(path), "--index-column", "question", "--cluster-column", "task"]) == 0
    out = capsys.readouterr()
    assert f"read as {label}-separated" in out.err and "--sep" in out.err
    assert "clustered_upper" in out.out
    line = _cli_error(capsys, [path, "--sep", ",", "--index-column", "question"])
    assert f"looks {label}-separated. Pass --sep" in line


def test_cli_explicit_sep(capsys, tmp_path):
    path = _write(tmp_path, "r.csv", SEMI)
    assert main([str(path), "--sep", ";", "--index-column", "question", "--cluster-column", "task"]) == 0
    out = capsys.readouterr()
    assert out.err == "" and "clustered_upper" in out.out


def test_cli_saved_pandas_index(capsys, tmp_path):
    path = tmp_path / "r.csv"
    pd.DataFrame({"a": [1, 0, 1], "b": [0, 1, 1]}).to_csv(path)
    line = _cli_error(capsys, [path])
    assert "Column 'Unnamed: 0'" in line and "saved pandas index" in line
    assert "--index-column 'Unnamed: 0'" in line and "index=False" in line
    assert main([str(path), "--index-column", "Unnamed: 0"]) == 0
    assert "bayes_lower" in capsys.readouterr().out


def test_cli_unnamed_column_besides_index(capsys, tmp_path):
    path = tmp_path / "r.csv"
    pd.DataFrame({"question": ["q1", "q2", "q3"], "a": [1, 0, 1]}).to_csv(path)
    line = _cli_error(capsys, [path, "--index-column", "question"])
    assert "Column 'Unnamed: 0'" in line and "empty header" in line and "index=False" in line


def test_cli_note_comes_before_a_later_error(capsys, tmp_path):
    path = _write(tmp_path, "r.csv", SEMI)
    line = _cli_error(capsys, [path, "--index-column", "question", "--cluster-column", "topic"])
    assert "--cluster-column 'topic' is not a column" in line and "'task', 'a', 'b'" in line


def test_a_confidence_level_passed_as_alpha_is_refused():
    """alpha=0.95 would give 5% intervals without a word."""
    from pyro_qem.evals._data import check_alpha

    assert check_alpha(0.05) == 0.05 and check_alpha(0.5) == 0.5
    with pytest.raises(ValueError, match=r"miss rate.*asks for 5% intervals.*pass alpha=0.05"):
        check_alpha(0.95)
    with pytest.raises(ValueError, match=r"miss rate"):
        evals.wilson_interval(5, 10, alpha=0.95)
