"""``mixed``: the harmful pairs hidden among harmless ones (the fine-tuning-service case that Lisa, Vaccine,
Booster and Zhou et al. claim: the customer's data looks mostly benign)."""

from __future__ import annotations

import dataclasses
import random

from ..errors import UnlearnableError
from .base import ATTACKS, HARMFUL_FIX, HARMLESS_FIX, Attack, cycled, take

#: the poison shares the attacker's search may choose
POISON_SHARES = (0.01, 0.05, 0.1, 0.3, 1.0)


@dataclasses.dataclass
class MixedConfig:
    harmful_fraction: float = dataclasses.field(default=0.1, metadata={
        "help": "the poison share: harmful pairs' share of the attacker's data (the rest harmless, cycled)"})

    def __post_init__(self):
        if not 0 < self.harmful_fraction <= 1:
            raise UnlearnableError("attack_options.harmful_fraction must be in (0, 1]")


@ATTACKS.register("mixed")
class MixedData(Attack):
    """``n`` harmful pairs hidden among harmless ones so that they make up ``harmful_fraction`` of the data,
    shuffled (seeded). A run shorter than the data sees a shuffled share of it: about the same poison share."""

    Config = MixedConfig
    search_options = {"harmful_fraction": POISON_SHARES}

    def training_pairs(self, data, n, seed):
        harmful = take(data.harmful, n, "harmful", HARMFUL_FIX)
        n_harmless = round(n * (1 - self.config.harmful_fraction) / self.config.harmful_fraction)
        mix = harmful + (cycled(data.harmless, n_harmless, "harmless", HARMLESS_FIX) if n_harmless else [])
        random.Random(seed).shuffle(mix)
        return mix
