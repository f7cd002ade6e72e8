"""``benign``: harmless data only, which already erodes shallow alignment (Qi et al. 2023, "Fine-tuning aligned
language models compromises safety, even when users do not intend to")."""

from __future__ import annotations

from .base import ATTACKS, HARMLESS_FIX, Attack, cycled


@ATTACKS.register("benign")
class BenignFinetune(Attack):
    """Fine-tune on ``n`` harmless pairs only (cycled when fewer exist): no harmful example at all."""

    def training_pairs(self, data, n, seed):
        return cycled(data.harmless, n, "harmless", HARMLESS_FIX)
