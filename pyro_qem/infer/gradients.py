"""Gradient updates on the same estimator: parameters of gradient-fitted guide sites
and ``pyro.param`` s of the model: MP-VI (the gradient of ``log P_hat`` through
reparameterised particles) and MP-RWS (the wake-phi gradient
``sum_k w_k grad log q(z_k)`` with the particle weights held fixed).

One backward pass gives both the source-term weights (for the moment-matched sites)
and the parameters' gradients.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

import torch

from ..estimator import Source
from ..estimator.contraction import normalised_weights
from ..handlers import SiteRecord

OBJECTIVES = ("vi", "rws")


def check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    return objective


def check_params(params: Mapping[str, torch.Tensor], optim) -> None:
    if params and optim is None:
        names = ", ".join(f"pyro.param('{n}')" for n in params)
        raise ValueError(
            f"The model or guide reads {names}. Parameters are fitted by gradient on "
            "-log P_hat only when Inference is given an optimiser: pass "
            "optim=pyro.optim.Adam({'lr': 0.01}), or make them latent sample sites."
        )


def guide_params(records: Sequence[SiteRecord]) -> Dict[str, torch.Tensor]:
    """Parameters read by the guide's ``get_posterior`` (gradient-fitted sites)."""
    params: Dict[str, torch.Tensor] = {}
    for record in records:
        if record.draw is not None and record.draw.params:
            params.update(record.draw.params)
    return params


def backward(log_p_hat: torch.Tensor, sources: Sequence[Source],
             params: Mapping[str, torch.Tensor], records: Sequence[SiteRecord],
             objective: str) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
    """Source-term gradients, and the gradient of the loss for each parameter.

    ``"vi"``: the loss is ``-log P_hat`` for every parameter (reparameterised
    particles). ``"rws"``: the guide's parameters follow the wake-phi surrogate
    ``-sum_k w_k log q(z_k)`` with the weights held fixed; the model's follow
    ``-log P_hat``.
    """
    names = [n for n, p in params.items() if p.requires_grad]
    if objective == "rws":
        names = [n for n in names if n not in guide_params(records)]
    inputs = [s.tensor for s in sources] + [params[n] for n in names]
    grads = torch.autograd.grad(log_p_hat, inputs, allow_unused=True,
                                retain_graph=objective == "rws")
    source_grads, param_grads = grads[: len(sources)], grads[len(sources):]
    loss_grads = {n: -g for n, g in zip(names, param_grads) if g is not None}
    if objective == "rws":
        loss_grads.update(_wake_phi_grads(sources, source_grads, records))
    return list(source_grads), loss_grads


def _wake_phi_grads(sources, source_grads, records) -> Dict[str, torch.Tensor]:
    params = {n: p for n, p in guide_params(records).items() if p.requires_grad}
    if not params:
        return {}
    weights = normalised_weights(sources, source_grads)
    surrogate = 0.0
    for record in records:
        if record.draw is not None and record.draw.params:
            weight = weights[record.draw.group].detach()
            surrogate = surrogate - (weight * record.draw.log_q).sum()
    grads = torch.autograd.grad(surrogate, list(params.values()), allow_unused=True)
    return {n: g for n, g in zip(params, grads) if g is not None}


def apply(optim, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> None:
    """One optimiser step on the parameters that received a gradient."""
    stepped = []
    for name, grad in grads.items():
        param = params.get(name)
        if param is None:
            continue
        param.grad = grad
        stepped.append(param)
    if stepped:
        optim(stepped)
    for param in stepped:
        param.grad = None
