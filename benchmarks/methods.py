"""The methods compared, behind one small interface: ``step(data) -> loss`` and
``posterior() -> {site: q}``.

- ``QEM``: :class:`pyro_qem.Inference` on an :class:`pyro_qem.AutoQEM` guide;
- ``MP-VI`` / ``MP-RWS``: gradient updates on the same estimator, from
  ``pyro_qem.infer`` when the engine provides them (skipped otherwise);
- ``SVI``: Pyro's ``SVI`` with ``AutoNormal``, ``Trace_ELBO`` and Adam;
- ``NumPyro SVI``: the same in NumPyro, ``svi.update`` jit-compiled, on the NumPyro twin
  of the model (:mod:`benchmarks.numpyro_models`; only when numpyro is installed).
"""

from __future__ import annotations

import functools
import importlib.util
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import pyro
import pyro_qem
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro_qem import AutoQEM, Inference

from .models import Data
from .posterior import Posterior, autonormal_posterior, gradient_normal_posterior

Groups = Sequence[Sequence[str]]
GRADIENT_ENGINE_METHODS = {"MP-VI": "MPVI", "MP-RWS": "MPRWS"}
NUMPYRO_SVI = "NumPyro SVI"


@dataclass(frozen=True)
class MethodConfig:
    """One configuration of one method.

    :param method: ``QEM``, ``MP-VI``, ``MP-RWS``, ``SVI`` or ``NumPyro SVI``.
    :param lr: QEM's smoothing step, or Adam's learning rate.
    :param K: particles per group (None for SVI).
    :param average_from: QEM only: average the iterates from this step on.
    :param compile: QEM only: ``Inference(compile=...)`` (None: eager steps).
    """

    method: str
    lr: float
    K: Optional[int] = None
    average_from: Optional[int] = None
    compile: Optional[str] = None

    @property
    def label(self) -> str:
        k = f" K={self.K}" if self.K is not None else ""
        average = f" avg>{self.average_from}" if self.average_from is not None else ""
        compiled = f" compile={self.compile}" if self.compile else ""
        return f"{self.method}{k} lr={self.lr:g}{average}{compiled}"


def available(method: str) -> bool:
    """Whether the engine (or Pyro) provides ``method`` in this installation."""
    if method in GRADIENT_ENGINE_METHODS:
        return hasattr(pyro_qem.infer, GRADIENT_ENGINE_METHODS[method])
    if method == NUMPYRO_SVI:
        return all(importlib.util.find_spec(m) is not None for m in ("numpyro", "jax"))
    return method in ("QEM", "SVI")


class QEMFit:
    """QEM on an AutoQEM guide."""

    def __init__(self, model: Callable, groups: Groups, config: MethodConfig) -> None:
        # The paper's method: every site proposed as written (centred); the comparison's
        # q-moment errors are scored per model site.
        self.guide = AutoQEM(model, groups=groups, noncentre=None)
        self.inference = Inference(model, self.guide, K=config.K, lr=config.lr,
                                   average_from=config.average_from, compile=config.compile or False)

    def step(self, data: Data) -> float:
        return self.inference.step(data)

    @property
    def compile_seconds(self) -> float:
        """Seconds this fit's steps spent recording and compiling (0 when eager)."""
        compiled = self.inference.compiled
        return compiled.compile_seconds if compiled is not None else 0.0

    def posterior(self) -> Posterior:
        return self.guide.distributions()


class EngineGradientFit:
    """MP-VI or MP-RWS from ``pyro_qem.infer`` on an AutoGradientNormal guide, with Adam."""

    def __init__(self, model: Callable, groups: Groups, config: MethodConfig) -> None:
        cls = getattr(pyro_qem.infer, GRADIENT_ENGINE_METHODS[config.method])
        self.guide = pyro_qem.AutoGradientNormal(model, groups=groups)
        optim = pyro.optim.Adam({"lr": config.lr})
        self.inference = cls(model, self.guide, K=config.K, optim=optim)

    def step(self, data: Data) -> float:
        return self.inference.step(data)

    def posterior(self) -> Posterior:
        return gradient_normal_posterior(self.guide)


class SVIFit:
    """Pyro SVI: AutoNormal, Trace_ELBO, Adam."""

    def __init__(self, model: Callable, groups: Groups, config: MethodConfig) -> None:
        self.guide = AutoNormal(model)
        self.svi = SVI(model, self.guide, pyro.optim.Adam({"lr": config.lr}), Trace_ELBO())

    def step(self, data: Data) -> float:
        return self.svi.step(data)

    def posterior(self) -> Posterior:
        return autonormal_posterior(self.guide)


class NumPyroSVIFit:
    """NumPyro SVI (AutoNormal, Trace_ELBO, Adam) on the NumPyro twin of ``model`` (a
    benchmark model, or ``functools.partial`` of one with ``c`` bound).

    The first ``step`` initialises the guide and compiles ``svi.update`` (both jitted),
    so the runner's training time includes compilation; every later step is one call
    of the compiled update. The setup's split is appended to :attr:`setups`.
    """

    setups: List[Dict[str, float]] = []

    def __init__(self, model: Callable, groups: Groups, config: MethodConfig) -> None:
        from .models import MODELS

        func = model.func if isinstance(model, functools.partial) else model
        self.c = model.keywords.get("c", 1.0) if isinstance(model, functools.partial) else 1.0
        names = [name for name, bm in MODELS.items() if bm.model is func]
        if not names:
            raise ValueError("NumPyro SVI runs only the benchmark models with a NumPyro twin")
        self.name, self.lr, self.fit = names[0], config.lr, None

    def step(self, data: Data) -> float:
        if self.fit is None:
            from .numpyro_models import JittedSVI, to_jax

            start = time.perf_counter()
            self.fit = JittedSVI(self.name, to_jax(data), self.lr, self.c)
            self.setups.append({"init_s": self.fit.init_s, "compile_s": self.fit.compile_s,
                                "setup_s": time.perf_counter() - start})
        return self.fit.step()

    def posterior(self) -> Posterior:
        return self.fit.posterior()


def build(model: Callable, groups: Sequence[Sequence[str]], config: MethodConfig):
    """A fresh fit of ``config`` on ``model`` (the param store should be empty)."""
    if config.method == "QEM":
        return QEMFit(model, groups, config)
    if config.method == "SVI":
        return SVIFit(model, groups, config)
    if config.method in GRADIENT_ENGINE_METHODS:
        return EngineGradientFit(model, groups, config)
    if config.method == NUMPYRO_SVI:
        return NumPyroSVIFit(model, groups, config)
    raise ValueError(f"Unknown method {config.method!r}; expected QEM, MP-VI, MP-RWS, SVI "
                     f"or {NUMPYRO_SVI}.")
