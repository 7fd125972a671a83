"""Rewrites of a recorded step's graph before it is replayed or compiled.

A model writes a dot product as a broadcast product summed over a dim: a movielens-style
``(z * x).sum(-1)`` with ``z`` of shape ``(K, K, users, 1, genres)`` (two particle dims)
and features ``(users, films, genres)``, or a GLM's ``(beta * X).sum(-1)`` with ``beta``
of shape ``(K, 1, P)``. Eagerly that materialises the whole broadcast product (K x K x
users x films x genres) before summing it: 59 of the movielens step's 105 ms at K = 30,
and inductor's fused loop over it, reduction innermost, was no faster. The product is
a contraction, so :func:`contract_products` hands it to ``einsum``, which runs it as
one batched matrix product (BLAS) without the broadcast tensor. Only products whose
operands each bring dims of their own to the result are rewritten (an outer-product
structure, where the broadcast tensor is larger than both operands); a batched dot
product of same-shaped tensors stays a fused multiply-and-sum.
"""

from __future__ import annotations

import string
from typing import List, Optional, Sequence, Tuple

import torch

aten = torch.ops.aten

#: Products smaller than this many entries are left as they are (a BLAS call's set-up
#: costs more than the product saves).
MIN_PRODUCT_ENTRIES = 1 << 15


def contract_products(graph_module: torch.fx.GraphModule) -> int:
    """Replace, in place, every ``sum(mul(a, b), dims)`` of ``graph_module`` (an aten
    graph with shapes in ``node.meta["val"]``, as ``make_fx`` records it) whose product
    is used only by the sum, is at least :data:`MIN_PRODUCT_ENTRIES` large, and has
    dims of its own from each operand, by ``einsum`` of ``a`` and ``b``. Returns the
    number of products rewritten."""
    graph = graph_module.graph
    rewritten = 0
    for node in list(graph.nodes):
        plan = _plan(node)
        if plan is None:
            continue
        product = node.args[0]
        a, b = product.args
        equation, a_shape, b_shape, out_shape = plan
        with graph.inserting_before(node):
            a2 = graph.call_function(aten.reshape.default, (a, a_shape))
            b2 = graph.call_function(aten.reshape.default, (b, b_shape))
            contracted = graph.call_function(aten.einsum.default, (equation, [a2, b2]))
            result = graph.call_function(aten.reshape.default, (contracted, out_shape))
        result.meta.update(node.meta)
        node.replace_all_uses_with(result)
        graph.erase_node(node)
        graph.erase_node(product)
        rewritten += 1
    if rewritten:
        graph.lint()
        graph_module.recompile()
    return rewritten


def _plan(node: torch.fx.Node) -> Optional[Tuple[str, List[int], List[int], List[int]]]:
    """For a sum node over a qualifying product: the einsum equation, the operands'
    shapes without their broadcast (size-1) dims, and the sum's output shape."""
    if node.op != "call_function" or node.target is not aten.sum.dim_IntList or node.kwargs:
        return None
    product, dims = node.args[0], node.args[1]
    keepdim = bool(node.args[2]) if len(node.args) > 2 else False
    if (not isinstance(product, torch.fx.Node) or product.target is not aten.mul.Tensor
            or product.kwargs or len(product.users) != 1 or not dims):
        return None
    a, b = product.args
    if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
        return None
    values = [n.meta.get("val") for n in (a, b, product)]
    if not all(isinstance(v, torch.Tensor) for v in values):
        return None
    a_val, b_val, out_val = values
    if (a_val.dtype != b_val.dtype or a_val.dtype != out_val.dtype or not out_val.is_floating_point()
            or a_val.device != b_val.device or out_val.numel() < MIN_PRODUCT_ENTRIES):
        return None
    out_shape = list(out_val.shape)
    rank = len(out_shape)
    if rank > len(string.ascii_letters):
        return None
    summed = {d % rank for d in dims}
    letters = string.ascii_letters[:rank]
    a_sub, a_shape = _operand(a_val.shape, out_shape, letters)
    b_sub, b_shape = _operand(b_val.shape, out_shape, letters)
    kept = [i for i in range(rank) if i not in summed and out_shape[i] != 1]
    own_a = [i for i in kept if letters[i] in a_sub and letters[i] not in b_sub]
    own_b = [i for i in kept if letters[i] in b_sub and letters[i] not in a_sub]
    if not own_a or not own_b:
        return None
    equation = f"{a_sub},{b_sub}->{''.join(letters[i] for i in kept)}"
    result_shape = [out_shape[i] if i not in summed else 1 for i in range(rank)]
    if not keepdim:
        result_shape = [size for i, size in enumerate(result_shape) if i not in summed]
    return equation, a_shape, b_shape, result_shape


def _operand(shape: Sequence[int], out_shape: Sequence[int], letters: str) -> Tuple[str, List[int]]:
    """An operand's einsum subscripts and its shape without the size-1 dims that
    broadcast (or are size 1 in the result too): those carry no letter."""
    offset = len(out_shape) - len(shape)
    subscripts, sizes = [], []
    for d, size in enumerate(shape):
        if size == 1:
            continue
        subscripts.append(letters[offset + d])
        sizes.append(size)
    return "".join(subscripts), sizes
