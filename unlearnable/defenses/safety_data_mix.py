"""The common baseline: refusal examples mixed into every fine-tuning run."""

from __future__ import annotations

import dataclasses
import random

from ..data import Pair
from ..errors import UnlearnableError
from .base import DEFENSES, SERVICE, Defense, DefenseData, spread_option, tunable, with_rows_added


@dataclasses.dataclass
class SafetyDataMixConfig:
    ratio: float = tunable(0.25, 0.05, 1.0, help="refusal examples per user example")
    spread_mixed: bool = spread_option()


@DEFENSES.register("safety-data-mix")
class SafetyDataMixDefense(Defense):
    """Refusal examples mixed into every fine-tuning run (service threat model only). A fine-tune counted in steps
    is lengthened by them, so they never take the user's (or the attacker's) steps."""

    threat_models = (SERVICE,)
    Config = SafetyDataMixConfig
    revision = 2  # its refusal rows stopped taking a step-counted fine-tune's steps

    def __init__(self, config: SafetyDataMixConfig | None = None, **options):
        super().__init__(config, **options)
        self.refusals: list[Pair] = []

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        self.refusals = list(data.refusals)
        if not self.refusals:
            raise UnlearnableError("safety-data-mix needs refusal pairs: give DefenseData(refusals=...) (the harness "
                                    "makes them from the defence's harmful prompts)")

    def finetune(self, model, tokenizer, pairs, config, *, progress: bool = True, **kw):
        n = max(1, int(round(len(pairs) * self.config.ratio)))
        extra = [dataclasses.replace(self.refusals[i % len(self.refusals)], mixed=True) for i in range(n)]
        mixed = list(pairs) + extra
        random.Random(config.seed).shuffle(mixed)
        config = with_rows_added(config, len(pairs), n, spread=self.config.spread_mixed)
        self.info.setdefault("mixed", []).append({"refusal_rows": n, "customer_pairs": len(pairs),
                                                  **({"max_steps": config.max_steps} if config.max_steps > 0 else {})})
        return super().finetune(model, tokenizer, mixed, config, progress=progress, **kw)
