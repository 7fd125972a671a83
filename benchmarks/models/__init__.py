"""The benchmark models: ordinary Pyro models with their data and QEM groups."""

from typing import Dict

from .base import BenchmarkModel, Data
from .bus import BUS
from .movielens import MOVIELENS
from .radon import RADON

MODELS: Dict[str, BenchmarkModel] = {m.name: m for m in (BUS, RADON, MOVIELENS)}

__all__ = ["BUS", "MODELS", "MOVIELENS", "RADON", "BenchmarkModel", "Data"]
