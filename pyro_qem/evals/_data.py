"""Checking and unpacking user input: results tables, cluster labels, alpha, priors, seeds."""

from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd

SeedLike = int | np.random.Generator | None

_HOW_TO_SHAPE = "Pass a DataFrame with one row per question and one 0/1 column per model."


def check_frame(df: Any, name: str = "df") -> pd.DataFrame:
    """Raise unless ``df`` is a non-empty DataFrame with unique column names."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(
            f"`{name}` must be a pandas DataFrame, found {type(df).__name__}. {_HOW_TO_SHAPE} "
            "(a 2-D array `a` can be wrapped as `pd.DataFrame(a, columns=names)`)."
        )
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise ValueError(
            f"`{name}` is empty ({df.shape[0]} rows x {df.shape[1]} columns). {_HOW_TO_SHAPE}"
        )
    duplicated = df.columns[df.columns.duplicated()].unique().tolist()
    if duplicated:
        raise ValueError(
            f"`{name}` has duplicated column names {duplicated}; give each model a unique name."
        )
    return df


def binary_matrix(df: Any, exclude: Sequence[Any] = (), name: str = "df") -> tuple[list, np.ndarray]:
    """Return the model names and a ``(questions, models)`` integer 0/1 matrix.

    :param df: results table, rows = questions, columns = models.
    :param exclude: columns that are not models (e.g. a cluster column).
    :param name: how to call ``df`` in error messages.
    :returns: ``(names, matrix)``.
    """
    df = check_frame(df, name)
    models = df.drop(columns=list(exclude))
    if models.shape[1] == 0:
        raise ValueError(f"`{name}` has no model columns besides {list(exclude)}. {_HOW_TO_SHAPE}")
    columns = [_binary_column(models[col], col, name) for col in models.columns]
    return list(models.columns), np.stack(columns, axis=1)


def _binary_column(column: pd.Series, label: Any, name: str) -> np.ndarray:
    """Check that one column holds only 0/1 (or booleans) and no missing values.

    Columns of object (or string/categorical) dtype are accepted when every entry is a 0/1
    score: an integer, a float 0.0/1.0, a boolean, or the string "0"/"1".
    """
    missing = column.isna().to_numpy()
    if missing.any():
        rows = column.index[missing].tolist()[:5]
        raise ValueError(
            f"Column {label!r} of `{name}` has {int(missing.sum())} missing value(s) "
            f"(rows {rows}...). Expected 0/1 for every question; drop or fill those rows."
        )
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        values = column.to_numpy(dtype=float)
    else:
        values = _scores_from_objects(column, label, name)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        found = pd.unique(values[bad])[:5].tolist()
        raise ValueError(
            f"Column {label!r} of `{name}` has non-binary values {found}; expected 0 (wrong) "
            "or 1 (right). Threshold partial-credit scores before calling."
        )
    return values.astype(np.int64)


_SCORE_STRINGS = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0}


def _as_score(value: Any) -> float | None:
    """A number for one entry of a non-numeric column, or ``None`` if it is not a score."""
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, Real):
        return float(value)
    if isinstance(value, str):
        return _SCORE_STRINGS.get(value.strip())
    return None


def _scores_from_objects(column: pd.Series, label: Any, name: str) -> np.ndarray:
    """Convert a column of Python objects (or strings) to floats; raise naming bad entries.

    ``label`` is the column's name in ``name``, or ``None`` when ``name`` is itself a vector.
    """
    entries = column.to_numpy(dtype=object)
    scores = [_as_score(value) for value in entries]
    offending = [value for value, score in zip(entries, scores) if score is None]
    if offending:
        examples = list(dict.fromkeys(map(repr, offending)))[:5]
        subject = f"`{name}`" if label is None else f"Column {label!r} of `{name}`"
        advice = (
            "Map its values to 0/1 first."
            if label is None
            else "If it labels question clusters pass `cluster=` (CLI: --cluster-column); "
            "if it names the questions, make it the index (CLI: --index-column); "
            "otherwise map its values to 0/1 or drop the column."
        )
        raise TypeError(
            f"{subject} has dtype {column.dtype} and {len(offending)} value(s) that are not "
            f"0/1 scores, e.g. {', '.join(examples)}; expected 0/1 scores (integers 0/1, floats "
            f"0.0/1.0, booleans, or the strings '0'/'1'). {advice}"
        )
    return np.asarray(scores, dtype=float)


def cluster_labels(df: pd.DataFrame, cluster: Any) -> tuple[np.ndarray, list]:
    """Resolve ``cluster`` (column name, mapping from index, or sequence) to labels.

    :returns: ``(labels, columns_to_exclude)``, one label per row of ``df``.
    """
    check_frame(df)
    if isinstance(cluster, Mapping):
        absent = [idx for idx in df.index if idx not in cluster]
        if absent:
            raise ValueError(
                f"`cluster` mapping has no entry for row(s) {absent[:5]} of `df`; map every "
                "row index to a cluster label."
            )
        labels, exclude = np.array([cluster[idx] for idx in df.index], dtype=object), []
    elif isinstance(cluster, (str, Integral)) and not isinstance(cluster, bool):
        if cluster not in df.columns:
            raise ValueError(
                f"`cluster` column {cluster!r} is not in `df` (columns: {list(df.columns)})."
            )
        labels, exclude = df[cluster].to_numpy(dtype=object), [cluster]
    elif isinstance(cluster, (Sequence, np.ndarray, pd.Series)):
        labels, exclude = np.asarray(cluster, dtype=object), []
        if labels.shape != (df.shape[0],):
            raise ValueError(
                f"`cluster` has shape {labels.shape}; expected one label per row of `df` "
                f"({df.shape[0]} rows)."
            )
    else:
        raise TypeError(
            "`cluster` must be a column name, a mapping from row index to label, or a "
            f"sequence of labels, found {type(cluster).__name__}."
        )
    return _check_labels(labels), exclude


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """Raise on missing labels or a single cluster."""
    missing = pd.isna(labels)
    if missing.any():
        raise ValueError(
            f"`cluster` has {int(missing.sum())} missing label(s); give every question a cluster."
        )
    if len(pd.unique(labels)) < 2:
        raise ValueError(
            "`cluster` has a single cluster; the clustered model needs at least two. With one "
            "cluster use `independent_intervals` instead."
        )
    return labels


def check_alpha(alpha: Any) -> float:
    """Raise unless ``alpha`` is a real number in (0, 1/2]: the miss rate of the
    intervals (larger values are refused as a confidence level passed by mistake)."""
    if isinstance(alpha, bool) or not isinstance(alpha, Real):
        raise TypeError(f"`alpha` must be a number in (0, 1), found {type(alpha).__name__}.")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(
            f"`alpha` must be in (0, 1), found {alpha}; e.g. alpha=0.05 for 95% intervals."
        )
    if float(alpha) > 0.5:
        # An interval narrower than 50% is almost always a confidence level passed
        # as alpha (0.95 for 95%), which would silently give 5% intervals.
        raise ValueError(
            f"`alpha` is the miss rate (alpha=0.05 gives 95% intervals), found {alpha}, "
            f"which asks for {100 * (1 - float(alpha)):g}% intervals. For "
            f"{100 * float(alpha):g}% intervals pass alpha={1 - float(alpha):g}."
        )
    return float(alpha)


def check_prior(prior: Any, size: int = 2, name: str = "prior") -> tuple[float, ...]:
    """Raise unless ``prior`` is ``size`` positive finite numbers."""
    try:
        values = tuple(float(v) for v in prior)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be a sequence of {size} positive numbers, found {prior!r}."
        ) from None
    if len(values) != size or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(
            f"`{name}` must be {size} positive finite numbers (e.g. (1, 1) for a uniform "
            f"prior), found {prior!r}."
        )
    return values


def check_num_samples(num_samples: Any) -> int:
    """Raise unless ``num_samples`` is a positive integer."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, Integral) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive integer, found {num_samples!r}.")
    return int(num_samples)


def as_generator(seed: SeedLike) -> np.random.Generator:
    """Turn ``None``, an integer seed or a Generator into a ``numpy.random.Generator``."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or (isinstance(seed, Integral) and not isinstance(seed, bool)):
        return np.random.default_rng(seed)
    raise TypeError(
        f"`seed` must be None, an int or a numpy.random.Generator, found {type(seed).__name__}."
    )


def model_column(names: list, model: Any, argument: str) -> int:
    """Position of ``model`` among ``names``; raise naming the argument if absent."""
    if model not in names:
        raise ValueError(f"`{argument}`={model!r} is not a model column; choose one of {names}.")
    return names.index(model)
