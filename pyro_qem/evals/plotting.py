"""Matplotlib figures of intervals and comparison matrices (matplotlib imported lazily)."""

from typing import Any

import numpy as np
import pandas as pd

from ._data import binary_matrix, check_frame


def _axes(ax: Any) -> tuple[Any, Any]:
    """Return ``(figure, axes)``, creating them when ``ax`` is None."""
    if ax is not None:
        return ax.figure, ax
    import matplotlib.pyplot as plt

    return plt.subplots()


def plot_intervals(
    eval_df: pd.DataFrame,
    intervals_df: pd.DataFrame,
    filename: str | None = None,
    title: str = "Model accuracy",
    ax: Any = None,
) -> tuple[Any, Any]:
    """Bar chart of each model's accuracy with its interval as an error bar.

    :param eval_df: the 0/1 results (rows = questions, columns = models).
    :param intervals_df: index ``["lower", "upper"]``, e.g. from ``independent_intervals``.
    :param filename: if given, the figure is also saved there.
    :param title: axes title.
    :param ax: axes to draw on; a new figure is made if None.
    :returns: ``(figure, axes)``; nothing is shown.

    Example::

        >>> df = pd.DataFrame({"a": [1, 0, 1], "b": [0, 0, 1]})
        >>> from pyro_qem.evals import independent_intervals
        >>> fig, ax = plot_intervals(df, independent_intervals(df))
    """
    names, scores = binary_matrix(eval_df, name="eval_df")
    intervals = _interval_rows(check_frame(intervals_df, "intervals_df"), names)
    means = scores.mean(0)
    fig, ax = _axes(ax)
    positions = np.arange(len(names))
    ax.bar(positions, means, color="#9ab", label="accuracy")
    err = np.abs(np.vstack([means - intervals[0], intervals[1] - means]))
    ax.errorbar(positions, means, yerr=err, fmt="none", ecolor="#333", capsize=4)
    ax.set_xticks(positions)
    ax.set_xticklabels([str(n) for n in names], rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Accuracy")
    ax.set_title(title)
    fig.tight_layout()
    if filename is not None:
        fig.savefig(filename)
    return fig, ax


def _interval_rows(intervals_df: pd.DataFrame, names: list) -> np.ndarray:
    missing_rows = {"lower", "upper"} - set(intervals_df.index)
    if missing_rows:
        raise ValueError(
            f"`intervals_df` lacks rows {sorted(missing_rows)}; pass the output of "
            "`independent_intervals` (index ['lower', 'upper'])."
        )
    missing = [n for n in names if n not in intervals_df.columns]
    if missing:
        raise ValueError(f"`intervals_df` has no column for models {missing} of `eval_df`.")
    return intervals_df.loc[["lower", "upper"], names].to_numpy(dtype=float)


def plot_comparisons(
    comparison_df: pd.DataFrame,
    filename: str | None = None,
    title: str = "Model comparison",
    ax: Any = None,
) -> tuple[Any, Any]:
    """Heat map of ``P(row model more accurate than column model)``.

    :param comparison_df: M x M frame, e.g. from ``independent_comparisons``.
    :param filename: if given, the figure is also saved there.
    :param title: axes title.
    :param ax: axes to draw on; a new figure is made if None.
    :returns: ``(figure, axes)``; nothing is shown.

    Example::

        >>> from pyro_qem.evals import independent_comparisons
        >>> df = pd.DataFrame({"a": [1, 0, 1], "b": [0, 0, 1]})
        >>> fig, ax = plot_comparisons(independent_comparisons(df))
    """
    matrix = check_frame(comparison_df, "comparison_df")
    if list(matrix.index) != list(matrix.columns):
        raise ValueError("`comparison_df` must be square with the same models as rows and columns.")
    fig, ax = _axes(ax)
    image = ax.imshow(matrix.to_numpy(dtype=float), cmap="RdYlGn", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="P(row model > column model)")
    labels = [str(n) for n in matrix.index]
    ax.set_xticks(range(len(labels)))
    ax.set_yticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_yticklabels(labels)
    ax.set_xlabel("Model B")
    ax.set_ylabel("Model A")
    ax.set_title(title)
    fig.tight_layout()
    if filename is not None:
        fig.savefig(filename)
    return fig, ax
