"""Time to SVI's held-out score over several seeds: how much of the single-run ratio in
the comparison table is luck.

For each model, the configurations that the comparison (``results.json``) picked are
rerun with seeds 0..N-1: the selected SVI configuration, whose final pred-ll on that
seed is the target, and the QEM configurations that were selected or fastest there.
Configurations are not re-chosen per seed, which if anything favours SVI's target. The
fastest QEM configuration also runs with the compiled step (``compile="inductor"``):
its time to target is training time, its recording and compilation are shown apart
(with them, add that column).

Run ``python -m benchmarks.seeds [--seeds 5] [--models bus,radon,movielens]``; writes
``seeds.md`` next to ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from . import reference, summary
from .compare import make_task
from .headline import curves_of
from .methods import MethodConfig
from .models import MODELS
from .runner import Curve, Settings, run
from .table import number


def chosen_configs(curves: Sequence[Curve], compile: Optional[str] = "inductor") -> Dict[str, MethodConfig]:
    """The selected SVI configuration, the selected and fastest QEM ones, and the
    fastest again with ``Inference(compile=compile)`` (unless None)."""
    svi = summary.select(curves, "SVI")
    goal = summary.targets(curves)["pred_ll"]
    qem = summary.of_method(curves, "QEM")
    fastest = min(qem, key=lambda c: summary.time_to(c, "pred_ll", goal))
    selected = summary.select(curves, "QEM")
    picked = {"SVI": svi, "QEM (selected)": selected}
    if fastest.label != selected.label:
        picked["QEM (fastest)"] = fastest
    configs = {role: MethodConfig(**c.config) for role, c in picked.items()}
    # The fastest configuration again with the compiled step (its compilation is timed
    # apart: the table's time is training time).
    if compile is not None:
        configs["QEM (fastest), compiled"] = replace(MethodConfig(**fastest.config), compile=compile)
    return configs


def seed_rows(name: str, configs: Dict[str, MethodConfig], seeds: int, device: str,
              base: Settings) -> List[tuple]:
    """(role, config, seed, target, final pred-ll, time to target, ratio to SVI's,
    compile seconds) for every configuration and seed of model ``name``."""
    task = make_task(MODELS[name], 1.0, device, None)
    rows = []
    for seed in range(seeds):
        settings = replace(base, seed=seed)
        svi = run(configs["SVI"], task, settings)
        goal = summary.final(svi.pred_ll)
        t_svi = summary.time_to(svi, "pred_ll", goal)
        for role, config in configs.items():
            curve = svi if role == "SVI" else run(config, task, settings)
            t = summary.time_to(curve, "pred_ll", goal)
            rows.append((role, config, seed, goal, summary.final(curve.pred_ll), t, t / t_svi,
                         curve.compile_s))
    return rows


def markdown(name: str, rows) -> str:
    lines = [f"### {name}", "", "| role | configuration | seed | target pred-ll | final pred-ll "
             "| t to target (s) | / SVI's | compile (s) |", "|" + "---|" * 8]
    for role, config, seed, goal, final, t, ratio, compile_s in rows:
        lines.append(f"| {role} | {config.label} | {seed} | {goal:.1f} | {final:.1f} "
                     f"| {number(t, 2)} | {number(ratio, 2)} | {number(compile_s, 1) if compile_s else '-'} |")
    lines.append("")
    for role in dict.fromkeys(r[0] for r in rows if r[0] != "SVI"):
        ratios = [r[6] for r in rows if r[0] == role]
        reached = [x for x in ratios if math.isfinite(x)]
        median = statistics.median(ratios) if ratios else math.nan
        lines.append(f"- {role}: median time ratio {number(median, 2)} over {len(ratios)} seeds "
                     f"(reached the target in {len(reached)}; range "
                     f"{number(min(ratios), 2)}-{number(max(ratios), 2)}; target <= 0.33)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--models", default="bus,radon,movielens")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--results", type=Path, default=reference.DEFAULT_RESULTS / "results.json")
    parser.add_argument("--steps", type=int, default=Settings.steps, help="QEM steps")
    parser.add_argument("--svi-steps", type=int, default=Settings.svi_steps)
    parser.add_argument("--compile", default="inductor", choices=("inductor", "trace", "none"),
                        help="the compiled step of the extra QEM row ('none': no such row)")
    args = parser.parse_args(argv)
    base = Settings(steps=args.steps, svi_steps=args.svi_steps)
    payload = json.loads(args.results.read_text())
    parts = []
    for name in args.models.split(","):
        configs = chosen_configs(curves_of(payload["models"][name]),
                                 None if args.compile == "none" else args.compile)
        part = markdown(name, seed_rows(name, configs, args.seeds, args.device, base))
        print(part, flush=True)
        parts.append(part)
    text = "\n".join(parts)
    (args.results.parent / "seeds.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
