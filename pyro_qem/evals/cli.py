"""Command line: ``python -m pyro_qem.evals results.csv [options]``.

Prints a table of accuracies and intervals, the matrix of pairwise probabilities, and each
model's probability of being best and expected rank.
"""

import argparse
import re
import sys
from collections.abc import Sequence

import pandas as pd

from .clustered import clustered_intervals
from .comparisons import expected_ranks, independent_comparisons, paired_comparisons, prob_best
from .intervals import interval_table


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m pyro_qem.evals",
        description="Error bars and comparisons for LLM benchmark results "
        "(CSV: one row per question, one 0/1 column per model).",
    )
    parser.add_argument("csv", help="results file")
    parser.add_argument("--cluster-column", help="column naming each question's cluster/task")
    parser.add_argument("--index-column", help="column naming the questions (not a model)")
    parser.add_argument(
        "--sep",
        help="field separator of the file (default ','; when the file then has a single column "
        "whose header contains ';' or a tab, that separator is used instead)",
    )
    parser.add_argument("--paired", action="store_true", help="compare with the paired model")
    parser.add_argument("--alpha", type=float, default=0.05, help="1 - interval level (0.05)")
    parser.add_argument("--plot", metavar="PNG", help="save an interval plot to this file")
    return parser


def summary_tables(
    df: pd.DataFrame, cluster_column: str | None, paired: bool, alpha: float
) -> dict[str, pd.DataFrame]:
    """Compute the tables that the command line prints.

    :returns: ``{"intervals", "comparisons", "ranking"}`` DataFrames.
    """
    if cluster_column is not None and cluster_column not in df.columns:
        raise ValueError(
            f"--cluster-column {cluster_column!r} is not a column of the results; "
            f"available columns: {_listing(df.columns)}. Pass one of those (names are case-sensitive)."
        )
    models = df.drop(columns=[cluster_column]) if cluster_column else df
    table = interval_table(models, alpha)
    intervals = table[["correct", "questions", "accuracy", "bayes_lower", "bayes_upper"]]
    intervals = intervals.join(table[["wilson_lower", "wilson_upper", "clt_lower", "clt_upper"]])
    if cluster_column:
        clustered = clustered_intervals(df, cluster_column, alpha).T
        intervals = intervals.join(clustered.add_prefix("clustered_"))
    compare = paired_comparisons(models) if paired else independent_comparisons(models)
    ranking = pd.DataFrame({"p_best": prob_best(models), "expected_rank": expected_ranks(models, paired)})
    if paired:
        ranking = ranking.drop(columns="p_best")
    return {"intervals": intervals, "comparisons": compare, "ranking": ranking}


def format_report(tables: dict[str, pd.DataFrame], alpha: float, paired: bool) -> str:
    """Render the tables as plain text."""
    level = f"{100 * (1 - alpha):g}%"
    kind = "paired model" if paired else "independent Beta posteriors"
    return "\n".join(
        [
            f"Accuracy and {level} intervals (bayes: Beta(1,1) posterior; clt: display only)",
            tables["intervals"].to_string(float_format=lambda v: f"{v:.3f}"),
            "",
            f"P(row model more accurate than column model), {kind}",
            tables["comparisons"].to_string(float_format=lambda v: f"{v:.3f}", na_rep="-"),
            "",
            "Ranking (1 = best)",
            tables["ranking"].to_string(float_format=lambda v: f"{v:.3f}"),
        ]
    )


_SEPARATORS = {";": "semicolon", "\t": "tab"}
_UNNAMED = re.compile(r"Unnamed: \d+")


def read_results(
    path: str, sep: str | None = None, index_column: str | None = None, notes: list[str] | None = None
) -> pd.DataFrame:
    """Read a results CSV, checking its layout before the scores are validated.

    :param sep: field separator; ``None`` means ``","``, switching to ``";"`` or a tab when a
        comma-separated read gives a single column whose header contains one of those.
    :param index_column: column to use as the row index (the question names).
    :param notes: if given, remarks for the user (e.g. on a detected separator) are appended.
    :raises ValueError: with a one-line message on a bad layout or an unknown index column.
    """
    df = pd.read_csv(path, sep="," if sep is None else sep)
    if df.shape[1] == 1:
        header = str(df.columns[0])
        found = [c for c in _SEPARATORS if c in header]
        if found:
            guess = max(found, key=header.count)
            shown = "'\\t'" if guess == "\t" else repr(guess)
            if sep is None:
                df = pd.read_csv(path, sep=guess)
                if notes is not None:
                    notes.append(
                        f"note: {path} read as {_SEPARATORS[guess]}-separated (with commas it had "
                        f"a single column {header!r}); pass --sep {shown} to say so explicitly."
                    )
            else:
                raise ValueError(
                    f"{path} has a single column {header!r} when split on {sep!r}; it looks "
                    f"{_SEPARATORS[guess]}-separated. Pass --sep {shown} (or leave --sep out to "
                    "detect it)."
                )
    if index_column is not None:
        if index_column not in df.columns:
            raise ValueError(
                f"--index-column {index_column!r} is not a column of {path}; available columns: "
                f"{_listing(df.columns)}. Pass one of those (names are case-sensitive)."
            )
        df = df.set_index(index_column)
    for position, column in enumerate(df.columns):
        if not (isinstance(column, str) and _UNNAMED.fullmatch(column)):
            continue
        if position == 0 and index_column is None:
            raise ValueError(
                f"Column {column!r} of {path} looks like a saved pandas index (`df.to_csv(path)` "
                f"writes the row index as an unnamed first column). Pass --index-column "
                f"{column!r}, or drop that column (save with `df.to_csv(path, index=False)`)."
            )
        raise ValueError(
            f"Column {column!r} of {path} has an empty header, so it is not a named model (if it "
            "is a saved pandas index, re-save with `df.to_csv(path, index=False)`). Give it a "
            "name or drop it."
        )
    return df


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        print(note, file=sys.stderr)


def _listing(columns: Sequence) -> str:
    """Columns as a short comma-separated list for error messages."""
    names = [repr(c) for c in columns]
    return ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    notes: list[str] = []
    try:
        df = read_results(args.csv, args.sep, args.index_column, notes)
        tables = summary_tables(df, args.cluster_column, args.paired, args.alpha)
    except (OSError, ValueError, TypeError) as exc:
        _print_notes(notes)
        parser.error(" ".join(str(exc).split()))
    _print_notes(notes)
    print(format_report(tables, args.alpha, args.paired))
    if args.plot:
        _save_plot(df.drop(columns=[args.cluster_column]) if args.cluster_column else df, tables, args.plot)
        print(f"\nSaved interval plot to {args.plot}")
    return 0


def _save_plot(models: pd.DataFrame, tables: dict[str, pd.DataFrame], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plotting import plot_intervals

    bayes = tables["intervals"][["bayes_lower", "bayes_upper"]].T
    bayes.index = ["lower", "upper"]
    fig, _ = plot_intervals(models, bayes, filename=path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
