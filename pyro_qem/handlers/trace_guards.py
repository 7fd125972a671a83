"""Data-dependent decisions that a recorded step must check again when it is replayed.

A few numeric shortcuts choose their path from the values of the tensors at hand
(e.g. :func:`pyro_qem.estimator.log_prob.log_prob` expands a Gaussian density only where
the expansion is numerically safe). A recorded step (:mod:`pyro_qem.infer.compiled`)
keeps the path taken at the trace; :func:`decided` records the condition and its value
there, so that each replay can verify that the same path still holds and run the step
eagerly where it does not. Outside a recording it is plain ``bool(condition)``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Tuple

import torch

# (condition, the value it had at the trace) for the recording in progress, if any.
_recording: Optional[List[Tuple[torch.Tensor, bool]]] = None


def decided(condition: torch.Tensor) -> bool:
    """``bool(condition)`` of a one-element tensor, recorded as a guard while a step
    is being traced."""
    if _recording is None:
        return bool(condition)
    from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

    with disable_proxy_modes_tracing():  # the real value under the tracer
        value = bool(condition)
    _recording.append((condition, value))
    return value


@contextlib.contextmanager
def recording_guards() -> Iterator[List[Tuple[torch.Tensor, bool]]]:
    """Collect the :func:`decided` conditions of the block: ``(condition, value)``."""
    global _recording
    outer, _recording = _recording, []
    try:
        yield _recording
    finally:
        _recording = outer


def guards_hold(guards: List[Tuple[torch.Tensor, bool]]) -> Optional[torch.Tensor]:
    """A bool tensor: every recorded condition has its traced value (None if there are
    none)."""
    if not guards:
        return None
    held = [c.reshape(()) if value else ~c.reshape(()) for c, value in guards]
    return torch.stack(held).all()
