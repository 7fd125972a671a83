"""Step sizes for QEM's smoothing ``m <- (1 - lr) m + lr m_hat``.

A fixed step leaves Monte Carlo noise in the answer (each iterate is an exponential
moving average of noisy moment estimates with an effective window of about 1 / lr
steps). For a final answer either decay the step (:class:`RobbinsMonro`) or average
the iterates (``Inference(..., average_from=...)``).
"""

from __future__ import annotations

from typing import Callable, Union


class Constant:
    """``lr`` at every step."""

    def __init__(self, lr: float) -> None:
        self.lr = check_lr(lr, "lr")

    def __call__(self, step: int) -> float:
        return self.lr

    def __repr__(self) -> str:
        return f"Constant({self.lr})"


class RobbinsMonro:
    """``lr`` for the first ``start`` steps, then ``lr * (start / step) ** power``.

    With ``power`` in (0.5, 1] the steps satisfy the Robbins-Monro conditions (their sum
    diverges, the sum of their squares does not), so the iterates converge instead of
    fluctuating. With ``power = 1`` the iterate at step t is a weighted average of
    roughly the last ``t / (lr * start)`` moment estimates: keep ``lr * start`` small
    (2 to 5) so that late iterates average many steps.

    :param lr: the initial step.
    :param start: the update count at which decay begins.
    :param power: the decay exponent.
    """

    def __init__(self, lr: float, start: int, power: float = 1.0) -> None:
        self.lr = check_lr(lr, "lr")
        if not isinstance(start, int) or start < 1:
            raise ValueError(f"RobbinsMonro: start must be a positive int, got {start!r}.")
        if not 0.5 < power <= 1.0:
            raise ValueError(f"RobbinsMonro: power must be in (0.5, 1], got {power}.")
        self.start = start
        self.power = power

    def __call__(self, step: int) -> float:
        if step < self.start:
            return self.lr
        return self.lr * (self.start / (step + 1)) ** self.power

    def __repr__(self) -> str:
        return f"RobbinsMonro(lr={self.lr}, start={self.start}, power={self.power})"


StepSize = Union[float, Callable[[int], float]]


def as_schedule(lr: StepSize) -> Callable[[int], float]:
    """A float becomes :class:`Constant`; a callable ``step -> lr`` is used as is."""
    if callable(lr):
        return lr
    return Constant(lr)


def check_lr(lr: float, name: str) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0.0 < lr <= 1.0:
        raise ValueError(
            f"{name} must be a number in (0, 1] (the weight of the new moment estimate), "
            f"got {lr!r}. Typical values are 0.03 to 0.3."
        )
    return float(lr)
