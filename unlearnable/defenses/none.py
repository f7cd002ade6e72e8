"""The undefended baseline."""

from .base import DEFENSES, Defense


@DEFENSES.register("none")
class NoDefense(Defense):
    """The undefended baseline: plain fine-tuning, weights released as they are."""
