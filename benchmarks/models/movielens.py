"""movielens-shaped synthetic data: 300 users x (5 train + 5 test) films, 18 genres.

MovieLens-100K may not be redistributed, so the data are drawn from the model itself
with a fixed seed: binary genre features with about 10% ones, latents from the prior.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

import pyro
import pyro.distributions as dist

from .base import BenchmarkModel, Data, std_normal

USERS, FILMS_TRAIN, FILMS_TEST, GENRES = 300, 5, 5, 18
FEATURE_RATE = 0.1
SEED = 20250301


def model(data: Data, c: float = 1.0) -> None:
    """Per-user logistic regression on genre features; ``z`` is divided by ``c`` (and
    multiplied back in the likelihood) in the rescaled variant."""
    x, rating = data["x"], data["rating"]
    users, films, genres = x.shape
    mu_z = pyro.sample("mu_z", std_normal(rating, (genres,)).to_event(1))
    psi_z = pyro.sample("psi_z", std_normal(rating, (genres,)).to_event(1))
    with pyro.plate("user", users, dim=-2):
        z = pyro.sample("z", dist.Normal(mu_z / c, psi_z.exp() / c).to_event(1))
        with pyro.plate("film", films, dim=-1):
            logits = (c * z * x).sum(-1)
            pyro.sample("rating", dist.Bernoulli(logits=logits), obs=rating)


def synthesise(seed: int = SEED) -> Tuple[np.ndarray, np.ndarray]:
    """Features (300, 10, 18) and ratings (300, 10) drawn from the model's prior."""
    rng = np.random.default_rng(seed)
    films = FILMS_TRAIN + FILMS_TEST
    x = (rng.random((USERS, films, GENRES)) < FEATURE_RATE).astype(np.float32)
    mu_z = rng.standard_normal(GENRES)
    psi_z = rng.standard_normal(GENRES)
    z = mu_z + np.exp(psi_z) * rng.standard_normal((USERS, GENRES))
    logits = np.einsum("ufg,ug->uf", x, z)
    rating = (rng.random((USERS, films)) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    return x, rating


def load(device: str = "cpu") -> Tuple[Data, Data]:
    """Train (first 5 films of every user) and test (last 5 films) data."""
    x, rating = synthesise()
    x, rating = torch.as_tensor(x, device=device), torch.as_tensor(rating, device=device)
    train = {"x": x[:, :FILMS_TRAIN], "rating": rating[:, :FILMS_TRAIN]}
    test = {"x": x[:, FILMS_TRAIN:], "rating": rating[:, FILMS_TRAIN:]}
    return train, test


MOVIELENS = BenchmarkModel(
    name="movielens",
    model=model,
    load=load,
    groups=[["mu_z", "psi_z"]],
    rescaled_site="z",
    rescale=100.0,
    max_plate_nesting=2,
)
