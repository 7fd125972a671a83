"""Compare QEM, MP-VI / MP-RWS (when the engine has them) and Pyro SVI side by side
(and NumPyro's jit-compiled SVI when numpyro is installed: ``pip install -e .[bench]``).

Example::

    python -m benchmarks.compare                      # the full table
    python -m benchmarks.compare --quick --models radon
    python -m benchmarks.compare --device cuda

Prints one Markdown table per model (and the issue's checks), then the invariance
experiment on the rescaled variants, then the headline table (each method's selected
configuration); writes ``table.md``, ``headline.md``, ``results.json`` (raw curves) and
``curves_<model>.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List

import torch

from . import headline, plots, reference, rescaled, summary, table
from .methods import NUMPYRO_SVI, MethodConfig, NumPyroSVIFit, available
from .models import MODELS, BenchmarkModel
from .runner import Curve, Settings, Task, run

QEM_LRS = (0.03, 0.1, 0.3)
ADAM_LRS = (0.001, 0.01, 0.03, 0.1)
KS = (30, 10)
GRADIENT_K = 30


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bus,radon,movielens")
    parser.add_argument("--steps", type=int, default=None, help="QEM / MP-* steps (200)")
    parser.add_argument("--svi-steps", type=int, default=None, help="Pyro SVI steps (1000)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="training-time cap per run (30 s; 0 for none)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="a few configurations and steps")
    parser.add_argument("--no-rescaled", action="store_true", help="skip the invariance runs")
    parser.add_argument("--selected", action="store_true",
                        help="only the README's recommended QEM (eager and compiled) and the "
                             "selected SVI learning rates: a short run, e.g. on a GPU")
    parser.add_argument("--out", type=Path, default=reference.DEFAULT_RESULTS,
                        help="where tables, curves and plots go (NUTS references are always "
                             "cached in benchmarks/results)")
    args = parser.parse_args(argv)
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; choose from {sorted(MODELS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def make_settings(args: argparse.Namespace) -> Settings:
    """Full or ``--quick`` settings; ``--steps`` / ``--svi-steps`` override either."""
    settings = Settings(steps=30, svi_steps=60, max_seconds=10.0, num_evals=5,
                        elbo_particles=50, num_draws=100) if args.quick else Settings()
    if args.steps is not None:
        settings.steps = args.steps
    if args.svi_steps is not None:
        settings.svi_steps = args.svi_steps
    if args.max_seconds is not None:
        settings.max_seconds = args.max_seconds or None
    return settings


def method_grid(quick: bool, steps: int, selected: bool = False) -> List[MethodConfig]:
    """Every configuration to run; methods the engine lacks are reported and skipped.
    QEM runs at K = 30 and 10, averaging its iterates over the second half of the steps
    as the README recommends; MP-VI and MP-RWS, whose steps cost more, at K = 30.
    ``selected``: the recommended QEM (K = 30, lr = 0.1, eager and compiled) against
    Pyro SVI at the learning rates the full tables select (0.01, 0.03)."""
    if selected:
        grid = [MethodConfig("QEM", 0.1, 30, average_from=steps // 2, compile=mode)
                for mode in (None, "inductor")]
        return grid + [MethodConfig("SVI", lr) for lr in (0.01, 0.03)]
    qem_lrs, adam_lrs, ks = ((0.1,), (0.03,), (10,)) if quick else (QEM_LRS, ADAM_LRS, KS)
    grid = [MethodConfig("QEM", lr, K, average_from=steps // 2) for K in ks for lr in qem_lrs]
    gradient_k = ks[0] if quick else GRADIENT_K
    for method in ("MP-VI", "MP-RWS"):
        if available(method):
            grid += [MethodConfig(method, lr, gradient_k) for lr in adam_lrs]
        else:
            print(f"{method}: not available in this pyro_qem (pyro_qem.infer has no "
                  f"{method.replace('-', '')}); skipped")
    if not quick:  # the recommended configuration again, compiled (its compilation timed apart)
        grid.append(MethodConfig("QEM", 0.1, 30, average_from=steps // 2, compile="inductor"))
    grid += [MethodConfig("SVI", lr) for lr in adam_lrs]
    if available(NUMPYRO_SVI):
        grid += [MethodConfig(NUMPYRO_SVI, lr) for lr in adam_lrs]
    else:
        print(f"{NUMPYRO_SVI}: numpyro / jax not installed (pip install -e .[bench]); skipped")
    return grid


def make_task(bm: BenchmarkModel, c: float, device: str, reference_moments) -> Task:
    """``bm`` with ``c`` bound and its data on ``device``."""
    train, test = bm.load(device)
    return Task(name=bm.name if c == 1.0 else f"{bm.name} (c={c:g})",
                model=functools.partial(bm.model, c=c), train=train, test=test,
                groups=bm.groups, nesting=bm.max_plate_nesting, reference=reference_moments)


def run_model(bm: BenchmarkModel, args, settings: Settings) -> Dict:
    """All configurations on one model, then (unless skipped) the rescaled variant."""
    moments = reference.load_or_run(bm, run=not args.quick)
    if moments is not None and args.device != "cpu":
        moments = {s: {k: v.to(args.device) for k, v in m.items()} for s, m in moments.items()}
    task = make_task(bm, 1.0, args.device, moments)
    grid = method_grid(args.quick, settings.steps, args.selected)
    curves, numpyro_setups = [], {}
    for config in grid:
        curves.append(_run_logged(config, task, settings_for(config, settings)))
        if config.method == NUMPYRO_SVI and NumPyroSVIFit.setups:
            numpyro_setups[curves[-1].label] = NumPyroSVIFit.setups.pop()
        elif config.compile:
            # The runner's time leaves the compilation out; the table adds it back.
            compile_s = curves[-1].compile_s
            numpyro_setups[curves[-1].label] = {"init_s": math.nan, "compile_s": compile_s,
                                                "setup_s": compile_s, "excluded": True}
    nuts = reference.info_of(bm.name) if moments is not None else {}
    result = {"curves": curves, "rows": summary.rows(curves),
              "numpyro": numpyro_rows(curves, numpyro_setups),
              "checks": summary.checks(curves) + summary.reference_lines(nuts),
              "targets": summary.targets(curves), "reference": nuts}
    if not args.no_rescaled:
        methods = ["QEM", "MP-VI", "MP-RWS", "SVI"]
        scaled = make_task(bm, bm.rescale, args.device, None)
        again = rescaled.run_rescaled(rescaled.best_configs(curves, methods), scaled, settings)
        result["rescaled_curves"] = again
        result["rescaled"] = rescaled.compare(curves, again)
    return result


def settings_for(config: MethodConfig, settings: Settings) -> Settings:
    """NumPyro SVI takes as many steps as Pyro SVI, without the time cap: its first step
    compiles (seconds), every other one takes well under a millisecond."""
    if config.method != NUMPYRO_SVI:
        return settings
    return dataclasses.replace(settings, steps=settings.svi_steps, max_seconds=None)


def numpyro_rows(curves: List[Curve], setups: Dict[str, Dict[str, float]]) -> List[Dict]:
    """Each compiled run's setup (NumPyro SVI: jitted init + ``svi.update``
    compilation; compiled QEM: recording and ``torch.compile``) apart from its
    steady-state step, and its times to the common targets with and without setup."""
    goal = summary.targets(curves)
    out = []
    for c in curves:
        if c.label not in setups:
            continue
        setup = setups[c.label]
        row = {"label": c.label, **setup, "ms_per_step": 1e3 * c.time_per_step,
               "pred_ll": summary.final(c.pred_ll), "elbo": summary.final(c.elbo)}
        for key in ("pred_ll", "elbo"):
            t = summary.time_to(c, key, goal[key])
            if setup.get("excluded"):  # training time without the setup (compiled QEM)
                row[f"t_{key}"], row[f"t_{key}_no_compile"] = t + setup["setup_s"], t
            else:
                row[f"t_{key}"], row[f"t_{key}_no_compile"] = t, t - setup["setup_s"]
        out.append(row)
    return out


def numpyro_markdown(name: str, rows: List[Dict]) -> str:
    """The NumPyro SVI rows of one model: compilation apart from steady state."""
    if not rows:
        return ""
    lines = [f"Compiled methods on {name} (setup: NumPyro SVI's jitted svi.init and "
             "svi.update compilation, inside its first step; QEM's recording, "
             "torch.compile and check; times to the selected Pyro SVI's final scores):", "",
             "| method | init (s) | compile (s) | steady ms/step | pred-ll | ELBO "
             "| t to pred (s) | t to pred w/o setup (s) | t to ELBO (s) "
             "| t to ELBO w/o setup (s) |", "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['label']} | {table.number(r['init_s'], 2)} | {table.number(r['compile_s'], 2)} "
            f"| {table.number(r['ms_per_step'], 3)} | {table.number(r['pred_ll'])} "
            f"| {table.number(r['elbo'])} | {table.number(r['t_pred_ll'], 2)} "
            f"| {table.number(r['t_pred_ll_no_compile'], 2)} | {table.number(r['t_elbo'], 2)} "
            f"| {table.number(r['t_elbo_no_compile'], 2)} |")
    return "\n".join(lines) + "\n"


def _run_logged(config: MethodConfig, task: Task, settings: Settings) -> Curve:
    curve = run(config, task, settings)
    last = curve.pred_ll[-1] if curve.pred_ll else math.nan
    print(f"  {task.name}: {curve.label}: {1e3 * curve.time_per_step:.1f} ms/step, "
          f"pred-ll {last:.1f}, {curve.failed or 'ok'}", flush=True)
    return curve


def machine(device: str) -> str:
    """A one-line description of where this ran."""
    where = torch.cuda.get_device_name() if device == "cuda" else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    return f"{where}; torch {torch.__version__}; Python {platform.python_version()}"


def report(results: Dict[str, Dict], args, settings: Settings) -> str:
    """The Markdown text of every table, printed and saved."""
    parts = [f"Machine: {machine(args.device)}. Settings: {asdict(settings)}.", ""]
    for name, result in results.items():
        parts.append(table.markdown(name, result["rows"], result["checks"]))
        if result.get("numpyro"):
            parts.append(numpyro_markdown(name, result["numpyro"]))
        if "rescaled" in result:
            parts.append(rescaled.markdown(name, result["rescaled"], MODELS[name].rescale))
    return "\n".join(parts)


def save(results: Dict[str, Dict], text: str, args, settings: Settings) -> None:
    """``table.md``, ``results.json`` and one plot per model under ``args.out``."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text)
    payload = {"machine": machine(args.device), "settings": asdict(settings), "models": {}}
    for name, result in results.items():
        plots.plot_model(result["curves"], name, args.out)
        payload["models"][name] = {
            "targets": result["targets"], "checks": result["checks"],
            "curves": [asdict(c) for c in result["curves"]],
            "rescaled": result.get("rescaled", []), "reference": result.get("reference", {}),
            "rescaled_curves": [asdict(c) for c in result.get("rescaled_curves", [])],
            "numpyro": result.get("numpyro", []),
        }
    (args.out / "results.json").write_text(json.dumps(payload, default=_jsonable) + "\n")
    summary_text = headline.markdown(payload["models"], payload["machine"])
    (args.out / "headline.md").write_text(summary_text)
    print(summary_text)


def _jsonable(value):
    return None if isinstance(value, float) and not math.isfinite(value) else str(value)


def main(argv=None) -> Dict[str, Dict]:
    args = parse_args(argv)
    settings = make_settings(args)
    results = {}
    for name in args.models.split(","):
        print(f"{name}:", flush=True)
        results[name] = run_model(MODELS[name], args, settings)
    text = report(results, args, settings)
    print(text)
    save(results, text, args, settings)
    return results


if __name__ == "__main__":
    main()
