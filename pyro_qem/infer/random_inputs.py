"""Random draws lifted out of a recorded step, so that a compiler cannot reorder them.

A recorded QEM step draws its particles' noise with in-place random ops on fresh
tensors (``empty(shape).normal_()``), each consuming the global generator's state. A
compiler that schedules by data dependencies alone may run two independent draws in
the other order (torch's inductor does on CUDA, pytorch/pytorch#181136): every draw
stays a valid standard normal, but the particles differ from the eager step's, so the
compiled step could not be checked against it. :func:`lift_random_draws` rewrites the
graph so that each such draw is an input, and returns the draws to make, in the
recording's order, before each call: the same ops on the same generator in the same
order as the eager step, and a graph without hidden state (what a CUDA graph needs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import torch
import torch.fx

# Ops that make a fresh tensor to be filled in place, with no tensor inputs.
_FRESH = {torch.ops.aten.empty.memory_format}


@dataclass(frozen=True)
class RandomDraw:
    """One draw of a recorded step: ``make(*make_args)`` (a random factory such as
    ``randn``), or ``fill(make(*make_args), *fill_args)`` (``empty(...).normal_()``)."""

    make: Callable
    make_args: tuple
    make_kwargs: dict
    fill: Optional[Callable] = None
    fill_args: tuple = ()
    fill_kwargs: Optional[dict] = None

    def __call__(self) -> torch.Tensor:
        made = self.make(*self.make_args, **self.make_kwargs)
        if self.fill is None:
            return made
        return self.fill(made, *self.fill_args, **(self.fill_kwargs or {}))


def _is_random(node: torch.fx.Node) -> bool:
    tags = getattr(node.target, "tags", ())
    return node.op == "call_function" and torch.Tag.nondeterministic_seeded in tags


def _has_nodes(values: Any) -> bool:
    found = []
    torch.fx.node.map_arg(values, found.append)
    return bool(found)


def _is_factory(node: torch.fx.Node) -> bool:
    """A random factory (``randn``, ``rand``, ...): no tensor inputs at all."""
    return not _has_nodes((node.args, node.kwargs))


def _liftable(node: torch.fx.Node) -> bool:
    """A random factory, or an in-place fill of a fresh tensor used by nothing else,
    with constant options."""
    if _is_factory(node):
        return True
    if not node.args or not isinstance(node.args[0], torch.fx.Node):
        return False
    fresh = node.args[0]
    return (fresh.op == "call_function" and fresh.target in _FRESH
            and not _has_nodes((fresh.args, fresh.kwargs)) and list(fresh.users) == [node]
            and not _has_nodes((node.args[1:], node.kwargs))
            and _fills_in_place(node.target))


def _fills_in_place(op) -> bool:
    """``op`` writes its first argument and returns it (``normal_``, ``uniform_``, ...)."""
    schema = getattr(op, "_schema", None)
    if schema is None or not schema.arguments or len(schema.returns) != 1:
        return False
    first, returned = schema.arguments[0].alias_info, schema.returns[0].alias_info
    return bool(first is not None and first.is_write and returned is not None
                and returned.before_set == first.before_set)


def lift_random_draws(graph_module: torch.fx.GraphModule) -> Optional[List[RandomDraw]]:
    """Turn the random draws of ``graph_module`` into trailing inputs, in place.

    Returns the draws to pass after the graph's own inputs, in order (empty if the graph
    draws nothing), or None, leaving the graph as it was, when some random op depends
    on the graph's values (e.g. ``normal(loc_tensor, scale_tensor)``, a Gamma draw): a
    draw that must stay inside would be reordered against the lifted ones.
    """
    graph = graph_module.graph
    random = [node for node in graph.nodes if _is_random(node)]
    if not all(_liftable(node) for node in random):
        return None
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    last = placeholders[-1] if placeholders else None
    draws = []
    for index, node in enumerate(random):
        fresh = None if _is_factory(node) else node.args[0]
        if fresh is None:
            draws.append(RandomDraw(node.target, tuple(node.args), dict(node.kwargs)))
        else:
            draws.append(RandomDraw(fresh.target, tuple(fresh.args), dict(fresh.kwargs),
                                    node.target, tuple(node.args[1:]), dict(node.kwargs)))
        if last is None:
            with graph.inserting_before(next(iter(graph.nodes))):
                last = graph.placeholder(f"random_draw_{index}")
        else:
            with graph.inserting_after(last):
                last = graph.placeholder(f"random_draw_{index}")
        last.meta.update(node.meta)
        node.replace_all_uses_with(last)
        graph.erase_node(node)
        if fresh is not None:
            graph.erase_node(fresh)
    graph.lint()
    graph_module.recompile()
    return draws


def with_draws(fn: Callable, draws: Sequence[RandomDraw]) -> Callable:
    """``fn`` called with the inputs and then the draws, made just before the call."""
    def run(*inputs):
        return fn(*inputs, *(draw() for draw in draws))

    return run
