"""A data-dependent decision inside a recorded function is kept as a guard that the
replay evaluates on its own inputs."""

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_qem.handlers.trace_guards import decided, guards_hold, recording_guards


def shortcut(x):
    with recording_guards() as guards:
        y = x.exp() if decided(x.max() < 10.0) else x
        held = guards_hold(guards)
    return y, held


def test_outside_a_recording_it_is_plain_bool():
    assert decided(torch.tensor(True)) is True
    assert decided(torch.tensor(0.0) > 1.0) is False


def test_the_replay_reports_whether_the_traced_path_still_holds():
    graph = make_fx(shortcut)(torch.zeros(3))
    y, held = graph(torch.ones(3))
    assert bool(held) and torch.equal(y, torch.ones(3).exp())
    _, held = graph(torch.full((3,), 20.0))
    assert not bool(held)  # the eager path would not have taken the exp


def test_a_function_without_decisions_has_no_guard():
    with recording_guards() as guards:
        pass
    assert guards_hold(guards) is None
