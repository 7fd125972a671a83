"""Format the comparison as a Markdown table."""

from __future__ import annotations

import math
from typing import List, Sequence

from .summary import Row

HEADER = ("| method | ms/step (median) | pred-ll | joint pred-ll | mean err | sd err | ELBO "
          "| log P_hat K=30 | t to pred target (s) | t to ELBO target (s) | status |")
RULE = "|" + "---|" * 11


def number(value: float, digits: int = 1) -> str:
    """``value`` for a table cell ("never" for inf, "-" for NaN)."""
    if math.isinf(value):
        return "never"
    if math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


def markdown(model: str, rows: Sequence[Row], target_lines: Sequence[str]) -> str:
    """The table of one model, best predictive log-likelihood first, then its checks."""
    lines: List[str] = [f"### {model}", "", HEADER, RULE]
    ordered = sorted(rows, key=lambda r: -r.pred_ll if math.isfinite(r.pred_ll) else math.inf)
    for r in ordered:
        lines.append(
            f"| {r.label} | {number(r.ms_per_step)} | {number(r.pred_ll)} "
            f"| {number(r.pred_ll_joint)} | {number(r.mean_err, 3)} | {number(r.sd_err, 3)} | {number(r.elbo)} "
            f"| {number(r.log_p_hat)} | {number(r.t_pred, 2)} "
            f"| {number(r.t_elbo, 2)} | {r.status} |"
        )
    lines.append("")
    lines += [f"- {line}" for line in target_lines]
    return "\n".join(lines) + "\n"
