"""Command line: ``python -m pyro_qem.evals results.csv [options]``.

Prints a table of accuracies and intervals, the matrix of pairwise probabilities, and each
model's probability of being best and expected rank.
"""

import argparse
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        df = pd.read_csv(args.csv, index_col=args.index_column)
        tables = summary_tables(df, args.cluster_column, args.paired, args.alpha)
    except (OSError, ValueError, TypeError) as exc:
        parser.error(str(exc))
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
