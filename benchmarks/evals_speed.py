"""Wall-clock time of pyro_qem.evals on 10 models x 300 questions (and a few other sizes).

Run: ``python benchmarks/evals_speed.py``. Each function runs on fresh data (posterior caches
cleared) and the best of three runs is reported.
"""

import time

import numpy as np
import pandas as pd

from pyro_qem import evals
from pyro_qem.evals import clustered, paired


def make_results(models: int, questions: int, seed: int = 0) -> pd.DataFrame:
    """Correlated 0/1 results: shared question difficulty plus model skill."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 1.5, questions)
    skill = rng.uniform(-0.5, 2.0, models)
    logits = skill[None, :] - difficulty[:, None] + rng.normal(0, 0.7, (questions, models))
    scores = (rng.random((questions, models)) < 1 / (1 + np.exp(-logits))).astype(int)
    frame = pd.DataFrame(scores, columns=[f"model_{i}" for i in range(models)])
    frame["task"] = np.arange(questions) % 30
    return frame


def best_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        paired.paired_posterior.cache_clear()
        clustered.clustered_posterior.cache_clear()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    rows = []
    for models, questions in [(10, 300), (10, 30), (3, 20)]:
        df = make_results(models, questions)
        scores = df.drop(columns="task")
        cases = {
            "independent_intervals": lambda: evals.independent_intervals(scores),
            "independent_comparisons": lambda: evals.independent_comparisons(scores),
            "prob_best": lambda: evals.prob_best(scores),
            "paired_comparisons": lambda: evals.paired_comparisons(scores),
            "clustered_intervals": lambda: evals.clustered_intervals(df, "task"),
            "difference_interval(paired)": lambda: evals.difference_interval(
                scores, "model_0", "model_1", paired=True
            ),
        }
        for name, fn in cases.items():
            rows.append({"models": models, "questions": questions, "function": name, "seconds": best_time(fn)})
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
