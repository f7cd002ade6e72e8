"""Rosati et al.'s demonstration defence: gradient ascent on harmful data, baked into the weights."""

from __future__ import annotations

import copy
import dataclasses
import random

from ..errors import UnlearnableError
from ..training import TrainConfig, finetune
from .base import DEFENSES, Defense, DefenseData, HardeningBudget, tunable


@dataclasses.dataclass
class AdversarialLossConfig(HardeningBudget):
    max_steps: int = dataclasses.field(default=200, metadata={
        "help": "optimizer steps of the hardening (0: epochs over the data)"})
    alpha: float = tunable(0.5, 0.05, 2.0, help="weight of the (negated) harmful loss")
    epochs: float = dataclasses.field(default=1.0, metadata={"help": "passes over the data (max_steps 0)"})
    lr: float = 5e-4
    cap: float = dataclasses.field(default=6.0, metadata={"help": "per-example harmful loss cap (nats)"})
    batch_size: int = 16
    seed: int = dataclasses.field(default=0, metadata={"help": "order of the hardening data"})


@DEFENSES.register("adversarial-loss")
class AdversarialLossDefense(Defense):
    """Minimise the loss on harmless data while *maximising* (capped) the loss on harmful data,
    ``L = L_harmless - alpha * min(L_harmful, cap)``, before release.

    Counts under both threat models, since the attacker fine-tunes the hardened weights.
    """

    Config = AdversarialLossConfig

    def harden(self, model, tokenizer, data: DefenseData, *, progress: bool = True):
        c = self.config
        harmful, keep = list(data.harmful), list(data.harmless) + list(data.refusals)
        if not harmful or not keep:
            raise UnlearnableError("adversarial-loss needs harmful pairs and harmless or refusal pairs: give "
                                    "DefenseData(harmful=..., harmless=...) or refusals=...")
        pairs = keep + harmful
        weights = [1.0] * len(keep) + [-c.alpha] * len(harmful)
        order = list(range(len(pairs)))
        random.Random(c.seed).shuffle(order)
        cfg = TrainConfig(lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, **c.budget())
        hardened, history = finetune(copy.deepcopy(model), tokenizer, [pairs[i] for i in order], cfg,
                                     weights=[weights[i] for i in order], ascent_cap=c.cap, progress=progress,
                                     callbacks=c.callbacks())
        self.info["harden_history"] = [h for h in history if "loss" in h]
        return hardened
