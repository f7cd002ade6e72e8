"""Security vectors whose training length is chosen on held-out harmful pairs."""

from __future__ import annotations

import dataclasses

from ..errors import UnlearnableError
from ..vectors import SecurityVectors, VectorConfig
from .base import DEFENSES, DefenseData
from .security_vectors import SecurityVectorsConfig, SecurityVectorsDefense


@dataclasses.dataclass
class EarlyStoppedVectorsConfig(SecurityVectorsConfig):
    holdout: float = dataclasses.field(default=0.2, metadata={
        "help": "share of the defence's harmful pairs held out: the vectors are kept at the check where their "
                "loss is lowest"})
    epochs: float = dataclasses.field(default=8.0, metadata={
        "help": "most passes over the other pairs (the held-out loss, not a loss target, ends training)"})

    def __post_init__(self):
        if not 0 < self.holdout < 1 or self.epochs <= 0:
            raise UnlearnableError("early-stopped-vectors holdout must be in (0, 1) and epochs > 0")


@DEFENSES.register("early-stopped-vectors")
class EarlyStoppedVectorsDefense(SecurityVectorsDefense):
    """Security vectors trained on most of the defence's harmful pairs and kept as they were when the rest, held
    out, had their lowest loss: fitted to what they generalise to rather than memorising their own answers; on
    (frozen) during fine-tuning, off when serving. Service threat model only."""

    tradeoff_variants = {"early-stopped": None}

    Config = EarlyStoppedVectorsConfig

    def vector_config(self) -> VectorConfig:
        """How the vectors train: the harness's vector settings with this defence's hold-out and length."""
        c = self.config
        return dataclasses.replace(c.training, holdout=c.holdout, epochs=c.epochs, target_loss=0.0)

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        if self.vectors is None:
            self.vectors = SecurityVectors.train(model, tokenizer, list(data.harmful), self.vector_config(),
                                                 progress=progress, harmless=list(data.harmless))
        super().prepare(model, tokenizer, data, progress=progress)
