"""One attack run, fully specified: what the grid, a search trial or a threat model hands to the harness; and runs'
settings read as the attacker search's dimensions (what each dimension's values reached)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

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


def choices(settings: dict[str, Any], data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A trial's settings as the dimensions the report compares: the data (attack, each option, samples) and the
    recipe (the learning rate by decade). ``data``: what the run's data held (the attack's ``info``), where a run
    shorter than its data cut the harmful pairs: the harmful count and poison share it really trained on."""
    if not settings:
        return {}
    lr, data = settings.get("lr"), data or {}
    attack = settings.get("attack")
    out = {"attack": attack,
           **{f"{attack}.{k}": v for k, v in (settings.get("attack_options") or {}).items()},
           **({f"{attack}.poison_share (trained on)": round(data["poison_share"], 3)} if "poison_share" in data
              else {}),
           "n_samples": data.get("n_harmful", settings.get("n_samples")), "backbone": settings.get("backbone"),
           "lora_r": settings.get("lora_r") or (settings.get("lora") or {}).get("r"),
           "steps": settings.get("steps"), "batch_size": settings.get("batch_size"),
           "scheduler": settings.get("scheduler"),
           "lr (decade)": f"1e{math.floor(math.log10(lr))}" if lr else None}
    return {k: v for k, v in out.items() if v is not None}


def by_dimension(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per dimension, per value: the highest harm among feasible trials and how many trials tried it; ``driver``
    is the dimension whose values' best harms differ most (what the worst case depended on)."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        ok = r["feasible"] and r["harm_rate"] is not None
        for dim, value in (r.get("choices") or choices(r.get("settings", {}))).items():
            cell = table.setdefault(dim, {}).setdefault(str(value), {"best_harm_rate": None, "trials": 0})
            cell["trials"] += 1
            if ok and (cell["best_harm_rate"] is None or r["harm_rate"] > cell["best_harm_rate"]):
                cell["best_harm_rate"] = r["harm_rate"]
    spreads = {dim: max(b) - min(b) for dim, cells in table.items()
               if len(b := [c["best_harm_rate"] for c in cells.values() if c["best_harm_rate"] is not None]) > 1}
    return {"dimensions": table, "driver": max(spreads, key=spreads.get) if spreads else None,
            "spread": spreads}
