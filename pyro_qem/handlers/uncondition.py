"""Turn observed data into predictions, leaving ``pyro.deterministic`` sites alone."""

from __future__ import annotations

from pyro.poutine.messenger import Messenger


class UnconditionData(Messenger):
    """:func:`pyro.poutine.uncondition` for data only.

    ``pyro.deterministic`` sites stay functions of the draws: sampling their Delta inside
    the plate of draws (as ``uncondition`` would) broadcasts the draws against
    themselves. The observed value is kept in ``msg["infer"]["obs"]``.
    """

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and msg["is_observed"] and not msg["infer"].get("_deterministic"):
            msg["is_observed"] = False
            msg["infer"]["was_observed"] = True
            msg["infer"]["obs"] = msg["value"]
            msg["value"] = None
            msg["done"] = False
