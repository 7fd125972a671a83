"""Reduce raw curves to the figures of the table: final values, times to a target,
and the issue's checks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

from .runner import Curve

FINAL_WINDOW = 3


def final(values: Sequence[float], window: int = FINAL_WINDOW) -> float:
    """Mean of the last ``window`` values (evaluation noise averaged out)."""
    tail = [v for v in values[-window:] if math.isfinite(v)]
    return sum(tail) / len(tail) if tail else math.nan


def time_to(curve: Curve, key: str, target: float) -> float:
    """Training wall time at the first evaluation where ``key`` reaches ``target``."""
    for elapsed, value in zip(curve.time, getattr(curve, key)):
        if value >= target:
            return elapsed
    return math.inf


def of_method(curves: Sequence[Curve], method: str) -> List[Curve]:
    """The eager runs of ``method``: compiled QEM runs (``compile=``) are compared in a
    table of their own, not selected or timed with the eager configurations."""
    return [c for c in curves if c.config["method"] == method and not c.config.get("compile")]


def best(curves: Sequence[Curve], method: str, key: str = "pred_ll") -> Optional[Curve]:
    """The configuration of ``method`` with the highest final ``key``."""
    mine = [c for c in of_method(curves, method) if c.step]
    if not mine:
        return None
    return max(mine, key=lambda c: _or_minus_inf(final(getattr(c, key))))


def select(curves: Sequence[Curve], method: str) -> Optional[Curve]:
    """The configuration a user of ``method`` would pick without test data or NUTS: the
    best final value of its own objective (the standard ELBO for SVI, log P_hat for the
    methods on the massively parallel estimator). QEM at K = 30 when it was run."""
    pool = of_method(curves, method)
    at_30 = [c for c in pool if c.config["K"] == 30]
    return best(at_30 or pool, method, "elbo" if method == "SVI" else "log_p_hat")


def _or_minus_inf(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


@dataclass
class Row:
    """One line of the table."""

    label: str
    ms_per_step: float
    pred_ll: float
    pred_ll_joint: float
    mean_err: float
    sd_err: float
    elbo: float
    log_p_hat: float
    t_pred: float
    t_elbo: float
    status: str


def targets(curves: Sequence[Curve]) -> Dict[str, float]:
    """The common targets: the final predictive log-lik and ELBO of the selected SVI
    configuration (see :func:`select`)."""
    svi = select(curves, "SVI")
    return {"pred_ll": final(svi.pred_ll) if svi else math.nan,
            "elbo": final(svi.elbo) if svi else math.nan}


def rows(curves: Sequence[Curve]) -> List[Row]:
    """One :class:`Row` per curve, with times to the common targets."""
    goal = targets(curves)
    return [Row(
        label=c.label,
        ms_per_step=1e3 * c.time_per_step,
        pred_ll=final(c.pred_ll), pred_ll_joint=final(c.pred_ll_joint), mean_err=final(c.mean_err), sd_err=final(c.sd_err),
        elbo=final(c.elbo), log_p_hat=final(c.log_p_hat),
        t_pred=time_to(c, "pred_ll", goal["pred_ll"]), t_elbo=time_to(c, "elbo", goal["elbo"]),
        status=c.failed or (f"time cap at step {c.step[-1]}" if c.capped else "ok"),
    ) for c in curves]


def fastest(curves: Sequence[Curve], method: str, key: str, target: float) -> float:
    """The shortest time to ``target`` over the configurations of ``method``."""
    times = [time_to(c, key, target) for c in of_method(curves, method)]
    return min(times, default=math.nan)


def checks(curves: Sequence[Curve]) -> List[str]:
    """The issue's targets for one model, each stated with its numbers."""
    goal = targets(curves)["pred_ll"]
    svi = select(curves, "SVI")
    t_qem = fastest(curves, "QEM", "pred_ll", goal)
    t_svi = time_to(svi, "pred_ll", goal) if svi else math.nan
    lines = [f"time to pred-ll {goal:.1f} (selected SVI's final): QEM {t_qem:.2f} s vs SVI "
             f"{t_svi:.2f} s (target: ratio <= 0.33): {_ratio_verdict(t_qem, t_svi, 1 / 3)}"]
    if best(curves, "MP-VI"):
        mpvi = fastest(curves, "MP-VI", "pred_ll", goal)
        lines.append(f"same target: QEM {t_qem:.2f} s vs fastest MP-VI {mpvi:.2f} s "
                     f"(target: ratio <= 0.2): {_ratio_verdict(t_qem, mpvi, 0.2)}")
    lines += _step_cost_checks(curves)
    qem = select(curves, "QEM")
    if qem and svi and math.isfinite(final(qem.sd_err)):
        a, b = final(qem.sd_err), final(svi.sd_err)
        lines.append(f"sd error vs NUTS ({qem.label} vs {svi.label}): {a:.3f} vs {b:.3f}: "
                     f"{_verdict(a < b)}")
    return lines


def reference_lines(info: Mapping) -> List[str]:
    """What the exact posterior scores: the held-out predictive log-likelihood of the
    joint NUTS draws (absent from caches made before it was recorded)."""
    if not {"pred_ll", "pred_ll_joint"} <= set(info):
        return []
    return [f"NUTS reference ({info['samples']} draws): pred-ll {info['pred_ll']:.1f}, "
            f"joint pred-ll {info['pred_ll_joint']:.1f}"]


def _step_cost_checks(curves: Sequence[Curve]) -> List[str]:
    lines = []
    for K in sorted({c.config["K"] for c in curves if c.config["K"]}):
        qem = _step_times(curves, "QEM", K)
        vi = _step_times(curves, "MP-VI", K)
        if qem and vi:
            ratio = min(qem) / min(vi)
            lines.append(f"QEM step / MP-VI step at K={K}: {ratio:.2f} (target <= 1.2): "
                         f"{_verdict(ratio <= 1.2)}")
    return lines


def _step_times(curves: Sequence[Curve], method: str, K: int) -> List[float]:
    return [c.time_per_step for c in of_method(curves, method) if c.config["K"] == K]


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _ratio_verdict(mine: float, theirs: float, bound: float) -> str:
    """``mine / theirs <= bound`` for times to a target (inf: never reached)."""
    if math.isinf(mine):
        return "MISSED (QEM never reached the target)"
    return _verdict(mine <= bound * theirs)
