"""One attack run, fully specified: what the grid, a search trial or a threat model hands to the harness."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..adapters import LoraSpec
from ..training import TrainConfig


@dataclasses.dataclass
class AttackSettings:
    """The attacker's data (attack, its options, sample count) and training recipe for one run."""

    lr: float
    steps: int
    batch_size: int = 8
    backbone: str = "lora"
    lora_r: int | None = None          # None: the default LoRA shape (or ``lora``'s)
    scheduler: str = "constant"
    attack: str = "harmful-sft"
    n_samples: int = 200
    eval_every: int = 10
    attack_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    lora: dict[str, Any] | None = None  # a whole LoRA shape (LoraSpec fields) when a threat model fixes it
    lr_multiplier: float | None = None  # the customer's multiplier of a service's learning rate, when one applies

    def lora_spec(self) -> LoraSpec:
        if self.lora:
            return LoraSpec(**self.lora)
        return LoraSpec(r=self.lora_r, alpha=2 * self.lora_r) if self.lora_r else LoraSpec()

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(backbone=self.backbone, lr=self.lr, max_steps=self.steps, batch_size=self.batch_size,
                           seed=seed, logging_steps=max(1, self.steps // 4), scheduler=self.scheduler,
                           lora=self.lora_spec())

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "AttackSettings":
        """Settings stored by an earlier run (older records lack the newer fields; unknown keys are dropped)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})
