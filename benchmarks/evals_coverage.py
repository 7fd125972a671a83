"""Coverage of pyro_qem.evals intervals: exact for IID methods, simulated for the others.

Run: ``python benchmarks/evals_coverage.py [--reps 1000]``. IID rows are exact averages over
a uniform theta (compare with the table in docs/evals.md); clustered and paired rows draw
parameters from their priors, so a correct posterior covers at the nominal 0.95 up to
simulation error (standard error shown).
"""

import argparse

import numpy as np
import pandas as pd
from scipy.special import betainc, ndtri

from pyro_qem import evals
from pyro_qem.evals._bvn import bvn_upper
from pyro_qem.evals.clustered import cluster_counts, clustered_posterior
from pyro_qem.evals.paired import PairedTable, difference_cdf

IID = {
    "clt": evals.clt_interval,
    "wilson": evals.wilson_interval,
    "clopper_pearson": evals.clopper_pearson_interval,
    "bayes": evals.beta_interval,
}


def iid_rows() -> list[dict]:
    rows = []
    for n in (3, 10, 30, 50, 100, 300):
        s = np.arange(n + 1)
        row = {"setting": "iid (exact)", "N": n}
        for name, method in IID.items():
            lo, hi = method(s, np.full(n + 1, n))
            mass = betainc(s + 1, n - s + 1, hi) - betainc(s + 1, n - s + 1, lo)
            row[name] = float(mass.sum() / (n + 1))
        rows.append(row)
    return rows


def clustered_row(reps: int, clusters: int, size: int, rng: np.random.Generator) -> dict:
    labels = np.repeat(np.arange(clusters), size)
    bayes = naive = 0
    for _ in range(reps):
        d, theta = rng.gamma(1.0), rng.uniform()
        theta_t = rng.beta(max(d * theta, 1e-300), max(d * (1 - theta), 1e-300), size=clusters)
        correct = (rng.uniform(size=clusters * size) < theta_t[labels]).astype(int)
        cdf = clustered_posterior(cluster_counts(correct, labels)).prob_last_below(np.log(theta / (1 - theta)))
        bayes += 0.025 < cdf < 0.975
        lo, hi = evals.beta_interval(correct.sum(), correct.size)
        naive += lo <= theta <= hi
    return {"setting": f"clustered {clusters}x{size}", "N": clusters * size, "bayes": bayes / reps, "iid bayes (ignores clusters)": naive / reps}


def paired_row(reps: int, n: int, rng: np.random.Generator) -> dict:
    hits = 0
    for _ in range(reps):
        ta, tb = rng.uniform(size=2)
        rho = 2 * rng.beta(4, 2) - 1
        p00 = float(bvn_upper(ndtri(ta), ndtri(tb), rho))
        probs = np.clip([ta + tb + p00 - 1, 1 - tb - p00, 1 - ta - p00, p00], 0, None)
        table = PairedTable(*map(int, rng.multinomial(n, probs / probs.sum())))
        hits += 0.025 < difference_cdf(table, ta - tb) < 0.975
    return {"setting": "paired difference", "N": n, "bayes": hits / reps}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    rows = iid_rows()
    rows += [clustered_row(args.reps, c, s, rng) for c, s in ((5, 2), (10, 10), (30, 10))]
    rows += [paired_row(args.reps, n, rng) for n in (10, 30, 100)]
    table = pd.DataFrame(rows).set_index(["setting", "N"])
    print(table.to_string(float_format=lambda v: f"{v:.3f}", na_rep=""))
    print(f"\nsimulated rows: {args.reps} draws each, standard error {np.sqrt(0.95 * 0.05 / args.reps):.3f}")


if __name__ == "__main__":
    main()
