"""Write ``llm_results.csv``: SYNTHETIC results of 6 made-up models on a made-up benchmark.

    python tutorials/data/make_llm_results.py

No real model or benchmark is behind these numbers. The table imitates a small benchmark:
150 questions in 10 task clusters of 15, six models with accuracies between about 0.3 and
0.9. Whether a model answers a question correctly is drawn from

    P(correct) = sigmoid(ability[model] - difficulty[task] - difficulty[question]),

so tasks differ in difficulty (questions of one task are answered right or wrong together)
and the same questions are hard for every model (comparisons should be paired). The seed
is fixed: running this script again writes the same file.
"""

from pathlib import Path

import numpy as np
import pandas as pd

SEED = 20250101
MODELS = {  # made-up names, logit-scale ability
    "synth-small": -0.9,
    "synth-base": 0.1,
    "synth-chat": 0.5,
    "synth-pro": 1.3,
    "synth-pro-v2": 1.55,
    "synth-ultra": 2.5,
}
NUM_TASKS, PER_TASK = 10, 15


def make_results(seed: int = SEED) -> pd.DataFrame:
    """The results table: index ``question``, a ``task`` column, one 0/1 column per model."""
    rng = np.random.default_rng(seed)
    task_difficulty = rng.normal(0.0, 1.0, NUM_TASKS)
    task = np.repeat(np.arange(NUM_TASKS), PER_TASK)
    question_difficulty = rng.normal(0.0, 1.0, NUM_TASKS * PER_TASK)
    frame = {"question": [f"q{i:03d}" for i in range(len(task))],
             "task": [f"task_{t:02d}" for t in task]}
    for name, ability in MODELS.items():
        logit = ability - task_difficulty[task] - question_difficulty
        frame[name] = (rng.random(len(task)) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(frame).set_index("question")


if __name__ == "__main__":
    path = Path(__file__).with_name("llm_results.csv")
    make_results().to_csv(path)
    print(path)
