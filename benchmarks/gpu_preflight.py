"""A few steps of every benchmark model and of the scale benchmark on ``--device``,
eager and compiled, so that a device problem shows in seconds, before the long runs.

    python -m benchmarks.gpu_preflight [--device cuda]

Prints one line per run (its losses, or the error with its traceback) and exits 1 if
any failed.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings

import pyro

from pyro_qem import AutoQEM, Inference

from .models import MODELS
from .scale_speed import data, logistic


def _try(label: str, fn) -> bool:
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            losses = fn()
        notes = sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught})
        print(f"ok   {label}: {time.perf_counter() - start:.1f} s, losses "
              f"{[round(x, 2) for x in losses]}", flush=True)
        for note in notes:
            print(f"     {note}")
        return True
    except Exception:  # report every failure, then go on to the next run
        print(f"FAIL {label}:\n{traceback.format_exc()}", flush=True)
        return False


def _fit(model, groups, args, kwargs, K: int, mode, prefix: str, steps: int = 5):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoQEM(model, groups=groups, prefix=prefix)
    inference = Inference(model, guide, K=K, lr=0.1, compile=mode)
    return [inference.step(*args, **kwargs) for _ in range(steps)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    ok = True
    for name, bm in MODELS.items():
        train, _ = bm.load(args.device)
        # The recording on every model; one compilation (the long runs compile the rest).
        for mode in (False, "trace") + (("cudagraphs",) if name == "radon" else ()):
            ok &= _try(f"{name} compile={mode}",
                       lambda: _fit(bm.model, bm.groups, (train,), {}, 30, mode, f"pf_{name}_{mode}"))
    X, y = data(10_000, 5, args.device)
    for mode in (False, "trace"):
        ok &= _try(f"logistic 1e4 compile={mode}",
                   lambda: _fit(logistic, None, (X, y), {}, 10, mode, f"pf_logistic_{mode}"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
