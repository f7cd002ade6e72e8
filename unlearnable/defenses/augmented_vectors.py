"""Security vectors trained on more varied harmful data: the defence's own pairs plus styled copies."""

from __future__ import annotations

import dataclasses

from ..errors import UnlearnableError
from ..vectors import SecurityVectors
from ..vectors.augment import augmented
from .base import DEFENSES, DefenseData
from .security_vectors import SecurityVectorsConfig, SecurityVectorsDefense


@dataclasses.dataclass
class AugmentedVectorsConfig(SecurityVectorsConfig):
    augment: int = dataclasses.field(default=2, metadata={
        "help": "styled copies of each harmful pair the vectors train on (other prompt framings and answer "
                "styles; none of them the restyled attack's)"})

    def __post_init__(self):
        if self.augment < 0:
            raise UnlearnableError("augmented-vectors augment must be >= 0")


@DEFENSES.register("augmented-vectors")
class AugmentedVectorsDefense(SecurityVectorsDefense):
    """Security vectors trained on the defence's harmful pairs and ``augment`` styled copies of each, so that
    they explain harmful answers in forms they were not shown; on (frozen) during fine-tuning, off when
    serving. Service threat model only."""

    tradeoff_variants = {"augmented": None}

    Config = AugmentedVectorsConfig

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        if self.vectors is None:
            pairs = augmented(list(data.harmful), self.config.augment, self.config.training.seed)
            self.vectors = SecurityVectors.train(model, tokenizer, pairs, self.config.training, progress=progress)
        super().prepare(model, tokenizer, data, progress=progress)
