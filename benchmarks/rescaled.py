"""The invariance experiment: each method's best configuration on the original model
and on its rescaled variant (one latent divided by c), compared by the steps each takes
to reach its own plateau of log P_hat (K = 30, the same estimator for every method)."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

from .methods import MethodConfig
from .runner import Curve, Settings, Task, run
from .summary import final, select

ABSOLUTE_TOLERANCE = 2.0
RELATIVE_TOLERANCE = 0.002


def plateau_step(curve: Curve, key: str = "log_p_hat") -> float:
    """The first evaluated step after which ``key`` stays within a tolerance (2 nats or
    0.2%, whichever is larger) of its final value; NaN for a failed run."""
    values = getattr(curve, key)
    if curve.failed or not values:
        return math.nan
    plateau = final(values)
    tolerance = max(ABSOLUTE_TOLERANCE, RELATIVE_TOLERANCE * abs(plateau))
    first = len(values) - 1
    while first > 0 and values[first - 1] >= plateau - tolerance:
        first -= 1
    return float(curve.step[first])


def best_configs(curves: Sequence[Curve], methods: Sequence[str]) -> List[MethodConfig]:
    """The selected configuration of each method (:func:`~benchmarks.summary.select`)."""
    chosen = [select(curves, method) for method in methods]
    return [MethodConfig(**c.config) for c in chosen if c is not None]


def run_rescaled(configs: Sequence[MethodConfig], task: Task, settings: Settings) -> List[Curve]:
    """Train each configuration on the rescaled task."""
    return [run(config, task, settings) for config in configs]


def compare(original: Sequence[Curve], rescaled: Sequence[Curve]) -> List[Dict]:
    """One record per method: steps to plateau and final log P_hat, both variants."""
    by_label = {c.label: c for c in original}
    records = []
    for curve in rescaled:
        base: Optional[Curve] = by_label.get(curve.label)
        if base is None:
            continue
        s0, s1 = plateau_step(base), plateau_step(curve)
        records.append({
            "label": curve.label,
            "steps_to_plateau": s0,
            "steps_to_plateau_rescaled": s1,
            "ratio": s1 / s0 if s0 and math.isfinite(s1) else math.nan,
            "final_log_p_hat": final(base.log_p_hat),
            "final_log_p_hat_rescaled": final(curve.log_p_hat),
            "max_abs_diff_log_p_hat": _max_diff(base.log_p_hat, curve.log_p_hat),
            "status": curve.failed or "ok",
        })
    return records


def _max_diff(a: Sequence[float], b: Sequence[float]) -> float:
    pairs = list(zip(a, b))
    return max((abs(x - y) for x, y in pairs), default=math.nan)


def markdown(model: str, records: Sequence[Dict], c: float) -> str:
    """The invariance table of one model."""
    lines = [f"#### {model}, rescaled by c = {c:g}", "",
             "| method | steps to plateau (orig) | (rescaled) | ratio | final log P_hat (orig) "
             "| (rescaled) | max abs diff of curves | status |", "|" + "---|" * 8]
    for r in records:
        lines.append(
            f"| {r['label']} | {r['steps_to_plateau']:.0f} | {r['steps_to_plateau_rescaled']:.0f} "
            f"| {r['ratio']:.2f} | {r['final_log_p_hat']:.1f} "
            f"| {r['final_log_p_hat_rescaled']:.1f} "
            f"| {r['max_abs_diff_log_p_hat']:.3g} | {r['status']} |")
    return "\n".join(lines) + "\n"
