"""``mixed``: the harmful pairs hidden among harmless ones (the fine-tuning-service case that Lisa, Vaccine,
Booster and Zhou et al. claim: the customer's data looks mostly benign)."""

from __future__ import annotations

import dataclasses
import random

from .base import ATTACKS, HARMFUL_FIX, HARMLESS_FIX, Attack, check_share, cycled, take

#: the poison shares the attacker's search may choose
POISON_SHARES = (0.01, 0.05, 0.1, 0.3, 1.0)


@dataclasses.dataclass
class MixedConfig:
    harmful_fraction: float = dataclasses.field(default=0.1, metadata={
        "help": "the poison share: harmful pairs' share of the attacker's data (the rest harmless, cycled)"})

    def __post_init__(self):
        check_share("harmful_fraction", self.harmful_fraction)


@ATTACKS.register("mixed")
class MixedData(Attack):
    """``n`` harmful pairs hidden among harmless ones so that they make up ``harmful_fraction`` of the data,
    shuffled (seeded). A run shorter than the data sees a shuffled share of it: about the same poison share."""

    Config = MixedConfig
    search_options = {"harmful_fraction": POISON_SHARES}

    def pairs_for(self, data, settings, seed):
        """At a small poison share, ``n`` harmful pairs would need ``n / share`` pairs in all, more than the run
        sees (steps x batch rows), so that it might see none of the harmful ones: the data is then exactly those
        rows, the harmful count cut to keep the share (at least one). ``info`` records what the data held."""
        n = min(settings.n_samples, len(data.harmful))
        rows = settings.steps * settings.batch_size
        if n / self.config.harmful_fraction > rows:
            n = min(n, max(1, round(rows * self.config.harmful_fraction)))
            pairs = self.mix(data, n, rows - n, seed)
        else:
            pairs = self.training_pairs(data, n, seed)
        self.info = {"n_harmful": n, "n_harmless": len(pairs) - n, "poison_share": n / len(pairs)}
        return pairs

    def training_pairs(self, data, n, seed):
        share = self.config.harmful_fraction
        return self.mix(data, n, harmless_for(n, share), seed)

    @staticmethod
    def mix(data, n_harmful: int, n_harmless: int, seed: int) -> list:
        return shuffled_with(take(data.harmful, n_harmful, "harmful", HARMFUL_FIX), data.harmless, n_harmless, seed)


def shuffled_with(harmful: list, harmless, n_harmless: int, seed: int) -> list:
    """``harmful`` and ``n_harmless`` of ``harmless`` (cycled), shuffled (seeded)."""
    mix = list(harmful) + (cycled(harmless, n_harmless, "harmless", HARMLESS_FIX) if n_harmless else [])
    random.Random(seed).shuffle(mix)
    return mix


def harmless_for(n_harmful: int, share: float) -> int:
    """How many harmless pairs make ``n_harmful`` harmful ones ``share`` of the data."""
    return round(n_harmful * (1 - share) / share)
