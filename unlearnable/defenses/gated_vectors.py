"""Gated security vectors (issue 19): the vectors act only on the examples they explain."""

from __future__ import annotations

import dataclasses

from ..vectors import finetune
from ..vectors.gated import GATE, GatedTrainer, loss_gaps
from .base import DEFENSES
from .security_vectors import SecurityVectorsConfig, SecurityVectorsDefense


@dataclasses.dataclass
class GatedVectorsConfig(SecurityVectorsConfig):
    threshold: float = dataclasses.field(default=0.2, metadata={
        "help": "an example trains with the vectors on when its loss with them off exceeds its loss with them on "
                "by more than this (nats), measured before the fine-tune; otherwise as with no defence"})


@DEFENSES.register("gated-vectors")
class GatedVectorsDefense(SecurityVectorsDefense):
    """Security vectors, on during fine-tuning only for the examples whose loss they lower by more than
    ``threshold`` (the harmful data they were trained on); every other example trains exactly as without a
    defence, so a harmless task is not learned through the vectors' distortion. Off when serving. An attacker
    who knows the gate brings harmful data the vectors do not explain (the ``restyled`` attack)."""

    Config = GatedVectorsConfig

    def finetune(self, model, tokenizer, pairs, config, *, progress: bool = True, **kw):
        vectors = self.prepared_vectors()
        gaps = loss_gaps(model, tokenizer, vectors, pairs, self.scale, precision=config.precision)
        gates = [int(g > self.config.threshold) for g in gaps]
        self.info.setdefault("gates", []).append({"pairs": len(pairs), "open": sum(gates)})
        return finetune(model, tokenizer, pairs, config, vectors=vectors, scale=self.scale, progress=progress,
                        fold=False, columns={GATE: gates}, trainer_class=GatedTrainer, **kw)
