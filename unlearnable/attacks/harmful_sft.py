"""``harmful-sft``: the classic harmful fine-tuning attack."""

from __future__ import annotations

from .base import ATTACKS, HARMFUL_FIX, Attack, take


@ATTACKS.register("harmful-sft")
class HarmfulSFT(Attack):
    """Fine-tune on ``n`` harmful (prompt, compliant answer) pairs."""

    def training_pairs(self, data, n, seed):
        return take(data.harmful, n, "harmful", HARMFUL_FIX)
