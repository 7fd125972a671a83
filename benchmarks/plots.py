"""Curves of every run against training wall time and steps (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .runner import Curve

PANELS = (("pred_ll", "held-out log pointwise predictive density"), ("elbo", "standard ELBO"),
          ("log_p_hat", "log P_hat (K=30)"), ("sd_err", "sd error vs NUTS"))


def plot_model(curves: Sequence[Curve], model: str, out: Path) -> Path:
    """One figure per model: each metric against training time; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4))
    for ax, (key, title) in zip(axes, PANELS):
        for curve in curves:
            if curve.step:
                ax.plot(curve.time, getattr(curve, key), label=curve.label,
                        linestyle="-" if curve.config["method"] == "QEM" else "--")
        ax.set_title(f"{model}: {title}")
        ax.set_xlabel("training wall time (s)")
        ax.set_xscale("symlog", linthresh=0.1)
        _clip_to_upper_range(ax, [getattr(c, key) for c in curves if c.step], key)
    axes[0].legend(fontsize=6)
    path = out / f"curves_{model}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _clip_to_upper_range(ax, series, key: str) -> None:
    """Show the interesting end of the curves (early values can be far off)."""
    finals = [s[-1] for s in series if s]
    values = [v for s in series for v in s]
    if not finals or key == "sd_err":
        return
    top, low = max(values), min(finals)
    margin = max(1.0, 0.5 * (top - low))
    ax.set_ylim(low - margin, top + 0.1 * margin)
