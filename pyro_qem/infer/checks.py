"""Errors from running a model with K particles, re-raised so that they name the site.

A model that ran at set-up (one value per site) can still fail once every latent
site holds K particles: Python control flow on a sampled value (``if z > 0:``,
``float(z)``, ``z.item()``) needs a single value, and reshaping or expanding a tensor
to a plate's size ignores the particle dims on its left. Torch then raises from deep
inside the model with no site name. :func:`particle_run_errors` wraps the model call
of a particle run and re-raises with the last site drawn and what to do.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator, Optional

from ..handlers import SiteRecorder

# Torch's messages when a tensor of several values is used as one Python value.
_CONTROL_FLOW_MESSAGES = (
    "Boolean value of Tensor with more than one value is ambiguous",
    "cannot be converted to Scalar",
    "only one element tensors can be converted to Python scalars",
    "only integer tensors of a single element can be converted to an index",
)


# Pyro's and torch's messages for a shape that fitted one value per site but not K
# particles on the left (a plate's size check; a log_prob of data that does not
# broadcast with the particles).
_SHAPE_MESSAGES = ("Shape mismatch inside plate", "Value is not broadcastable with batch_shape")


@contextlib.contextmanager
def particle_run_errors(recorder: SiteRecorder, num_particles: int) -> Iterator[None]:
    """Re-raise the model's errors in a particle run with the site they came after.

    Control flow on a sampled value becomes a ValueError; other RuntimeErrors keep
    their type and gain the site and a hint. Errors pyro_qem raises itself (ValueError,
    NotImplementedError, ...) pass through unchanged: they already name their site.

    :param recorder: the run's site recorder (its last records say where the model was).
    :param num_particles: K, for the message.
    """
    try:
        yield
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        if _is_control_flow(error):
            raise ValueError(_control_flow_message(recorder, num_particles, error)) from error
        if isinstance(error, ValueError) and str(error).startswith(_SHAPE_MESSAGES):
            # The model ran at set-up, so the plate fitted one value per site: K
            # particles on the left moved a dim it indexed or reshaped from the left.
            message = _runtime_message(recorder, num_particles, error)
            if str(error).startswith(_SHAPE_MESSAGES[1]):
                message += (" A log density of data computed by hand (pyro.factor(name, "
                            "dist.Normal(mu, 1.).log_prob(y).sum())) must leave room for them: "
                            "observe the data in a pyro.plate instead, or write "
                            "dist.Normal(mu.unsqueeze(-1), 1.).log_prob(y).sum(-1).")
            raise ValueError(message) from error
        if isinstance(error, ValueError) and str(error).startswith("Expected parameter "):
            raise ValueError(_constraint_message(recorder, num_particles, error)) from error
        if type(error) is IndexError:
            # e.g. a[county] with more counties than particles: the index hit the
            # particle dim.
            raise IndexError(_runtime_message(recorder, num_particles, error)) from error
        if type(error) is not RuntimeError:
            raise
        raise RuntimeError(_runtime_message(recorder, num_particles, error)) from error


def _is_control_flow(error: Exception) -> bool:
    return any(text in str(error) for text in _CONTROL_FLOW_MESSAGES)


def _last_latent(recorder: SiteRecorder) -> Optional[str]:
    latent = [r.name for r in recorder.sites if not r.is_observed]
    return latent[-1] if latent else None


def _where(recorder: SiteRecorder) -> str:
    latent = _last_latent(recorder)
    last = recorder.sites[-1].name if recorder.sites else None
    if latent is None:
        return "before any latent site was drawn"
    if last != latent:
        return f"after latent site '{latent}' (the last site recorded was '{last}')"
    return f"after latent site '{latent}'"


def _control_flow_message(recorder: SiteRecorder, num_particles: int, error: Exception) -> str:
    return (
        f"The model failed {_where(recorder)} while running with K={num_particles} "
        f"particles per latent site ({type(error).__name__}: {error}). QEM evaluates all "
        "K particles at once, so each latent value is a tensor of K values, and Python "
        "control flow on a sampled value (if z > 0:, float(z), z.item(), range(n)) is not "
        "supported. Write it with tensor operations instead: torch.where(z > 0, a, b), "
        "or masking (poutine.mask, or multiplying by (z > 0).float())."
    )


def _constraint_message(recorder: SiteRecorder, num_particles: int, error: Exception) -> str:
    # Torch's message dumps the parameters and every invalid value: keep the names.
    text = str(error)
    found = re.match(r"Expected parameter (\w+).*? of distribution (\w+).*? to satisfy the "
                     r"constraint (\w+)", text, re.S)
    what = (f"parameter '{found[1]}' of a {found[2]} is outside its constraint {found[3]}"
            if found else text.split("\n")[0][:300])
    return (
        f"The model failed {_where(recorder)} while running with K={num_particles} "
        f"particles per latent site: {what}, for some particles. Each latent site holds K "
        "independent particles and the parameters of a later distribution combine them "
        "in every combination, so a constraint that the prior's joint draws respect can "
        "fail for some pairs (Uniform(low, high) with both latent: some particles of low "
        "exceed some of high). Reparameterise so that any values are valid, e.g. "
        "high = low + width with width sampled from a positive prior."
    )


# Torch's messages when tensors of different particle groups are joined.
_JOIN_MESSAGES = ("stack expects each tensor to be equal size", "Sizes of tensors must match")


def _runtime_message(recorder: SiteRecorder, num_particles: int, error: Exception) -> str:
    joined = ""
    if any(text in str(error) for text in _JOIN_MESSAGES):
        joined = (" Latent sites in different particle groups hold their K particles in "
                  "different dims, so torch.stack or torch.cat of them fails: put them in "
                  "one group (AutoQEM(model, groups=[['a', 'b']])), or combine them by "
                  "broadcasting arithmetic instead.")
    return (
        f"{error} [pyro_qem: the model failed {_where(recorder)} while running with "
        f"K={num_particles} particles per latent site, after running fine at set-up with "
        "one value per site. Each latent value has its K particles in a dim left of the "
        "plates: index and reshape from the right (a[..., county], not a[county]; "
        "Vindex; .expand(batch + shape)), and do not use Python control flow on sampled "
        f"values.{joined}]"
    )
