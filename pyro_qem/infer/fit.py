"""A fit loop around :meth:`~pyro_qem.infer.Inference.step`: progress bar, early stopping,
and a history of the loss and wall time per step.

A plain loop works as well; record into a :class:`FitHistory` to keep the same
history and plot::

    history = FitHistory()
    for _ in range(500):
        history.record(inference.step(y))
    history.plot()
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    from .inference import Inference


@dataclass
class FitHistory:
    """The loss (``-log P_hat``) and wall time of every step of a fit.

    Example::

        history = fit(inference, y, num_steps=500)
        history.losses[-1], sum(history.seconds), history.stopped_early
        ax = history.plot()

    :ivar losses: the loss of each step.
    :ivar seconds: the wall time of each step.
    :ivar smoothed: the exponential moving average of the loss after each step.
    :ivar stopped_early: whether :func:`fit` stopped before ``num_steps``.
    """

    losses: List[float] = field(default_factory=list)
    seconds: List[float] = field(default_factory=list)
    smoothed: List[float] = field(default_factory=list)
    smoothing: float = 0.05
    stopped_early: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing!r}.")
        self._last = time.perf_counter()

    def record(self, loss: float, seconds: Optional[float] = None) -> None:
        """Append a step's loss; ``seconds`` defaults to the time since the last record
        (or since the history was created)."""
        now = time.perf_counter()
        self.losses.append(float(loss))
        self.seconds.append(now - self._last if seconds is None else float(seconds))
        self._last = now
        previous = self.smoothed[-1] if self.smoothed else float(loss)
        self.smoothed.append(previous + self.smoothing * (float(loss) - previous))

    def __len__(self) -> int:
        return len(self.losses)

    def plot(self, ax=None, log_scale: bool = False):
        """Plot the loss per step and its moving average (matplotlib).

        :param ax: the axes to draw on (a new figure when None).
        :param log_scale: logarithmic step axis (the early steps dominate otherwise).
        :returns: the axes.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots()
        steps = range(1, len(self.losses) + 1)
        ax.plot(steps, self.losses, alpha=0.4, label="loss")
        ax.plot(steps, self.smoothed, label="moving average")
        ax.set_xlabel("step")
        ax.set_ylabel("-log P_hat")
        if log_scale:
            ax.set_xscale("log")
        ax.legend()
        return ax


def fit(
    inference: "Inference",
    *args,
    num_steps: int = 1000,
    progress_bar: bool = True,
    tol: Optional[float] = None,
    patience: int = 100,
    smoothing: float = 0.05,
    history: Optional[FitHistory] = None,
    **kwargs,
) -> FitHistory:
    """Run ``inference.step(*args, **kwargs)`` up to ``num_steps`` times.

    The loss is noisy (fresh particles every step), so stopping looks at its
    exponential moving average: the fit stops once that has not improved on its best
    value by more than ``tol`` for ``patience`` consecutive steps.

    Example::

        history = fit(inference, y, num_steps=2000, tol=0.01, patience=200)

    :param inference: a :class:`~pyro_qem.infer.Inference`.
    :param args: the model's arguments.
    :param num_steps: the most steps to take.
    :param progress_bar: show a tqdm bar, its postfix (the smoothed loss) updated every
        ``num_steps // 20`` steps.
    :param tol: the improvement in nats that counts; None never stops early.
    :param patience: steps without improvement before stopping.
    :param smoothing: weight of the newest loss in the moving average.
    :param history: a history to continue (its steps are kept).
    :param kwargs: the model's keyword arguments.
    """
    _check_fit_args(num_steps, tol, patience)
    history = FitHistory(smoothing=smoothing) if history is None else history
    history.stopped_early = False
    stop = _EarlyStop(tol, patience)
    every = max(1, num_steps // 20)
    bar = _progress(num_steps, progress_bar)
    try:
        for step in range(num_steps):
            history.record(inference.step(*args, **kwargs))
            if bar is not None:
                bar.update()
                if step % every == 0 or step == num_steps - 1:
                    bar.set_postfix_str(f"loss {history.smoothed[-1]:.4g}", refresh=False)
            if stop(history.smoothed[-1]):
                history.stopped_early = True
                break
    finally:
        if bar is not None:
            bar.close()
    return history


class _EarlyStop:
    """True once the smoothed loss has not beaten its best by ``tol`` for ``patience``
    consecutive steps (never when ``tol`` is None)."""

    def __init__(self, tol: Optional[float], patience: int) -> None:
        self.tol, self.patience = tol, patience
        self.best, self.since_best = math.inf, 0

    def __call__(self, smoothed: float) -> bool:
        if self.tol is None:
            return False
        if smoothed < self.best - self.tol:
            self.best, self.since_best = smoothed, 0
        else:
            self.since_best += 1
        return self.since_best >= self.patience


def _progress(num_steps: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=num_steps, desc="QEM", unit="step")


def _check_fit_args(num_steps, tol, patience) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
    if tol is not None and not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"tol must be a non-negative number (nats) or None, got {tol!r}.")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"patience must be a positive int (steps), got {patience!r}.")
