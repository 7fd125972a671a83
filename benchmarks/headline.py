"""The headline table: each method's selected configuration (by its own objective) on
every model, from a comparison's ``results.json``.

Run ``python -m benchmarks.headline [benchmarks/results/results.json]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Sequence

from .reference import DEFAULT_RESULTS
from .runner import Curve
from .summary import rows, select
from .table import number

METHODS = ("QEM", "MP-VI", "MP-RWS", "SVI")
HEADER = ("| model | method (selected) | ms/step | pred-ll | joint pred-ll | mean err | sd err "
          "| ELBO | log P_hat K=30 | t to pred target (s) | t to ELBO target (s) |")


def curves_of(model: Dict) -> List[Curve]:
    """The curves of one model in a ``results.json``."""
    return [Curve(**{k: (v if v is not None else float("nan")) if k == "time_per_step" else v
                     for k, v in c.items()}) for c in model["curves"]]


def markdown(models: Dict[str, Dict], machine: str) -> str:
    """One row per (model, method): the selected configuration's figures."""
    lines: List[str] = [f"Machine: {machine}.", "", HEADER, "|" + "---|" * 11]
    for name, model in models.items():
        curves = curves_of(model)
        by_label = {r.label: r for r in rows(curves)}
        for method in METHODS:
            chosen = select(curves, method)
            if chosen is not None:
                lines.append(_line(name, by_label[chosen.label]))
        nuts = model.get("reference", {})
        if {"pred_ll", "pred_ll_joint"} <= set(nuts):
            lines.append(f"| {name} | NUTS reference ({nuts['samples']} draws) | - "
                         f"| {number(nuts['pred_ll'])} | {number(nuts['pred_ll_joint'])} "
                         "| - | - | - | - | - | - |")
    return "\n".join(lines) + "\n"


def _line(model: str, r) -> str:
    return (f"| {model} | {r.label} | {number(r.ms_per_step)} | {number(r.pred_ll)} "
            f"| {number(r.pred_ll_joint)} | {number(r.mean_err, 3)} | {number(r.sd_err, 3)} | {number(r.elbo)} "
            f"| {number(r.log_p_hat)} | {number(r.t_pred, 2)} | {number(r.t_elbo, 2)} |")


def main(argv: Sequence[str] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=DEFAULT_RESULTS / "results.json")
    args = parser.parse_args(argv)
    payload = json.loads(args.results.read_text())
    text = markdown(payload["models"], payload["machine"])
    print(text)
    return text


if __name__ == "__main__":
    main()
