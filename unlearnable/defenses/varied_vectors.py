"""Early-stopped security vectors trained on the harmful pairs in varied styles."""

from __future__ import annotations

import dataclasses

from ..errors import UnlearnableError
from ..vectors import VectorConfig
from .base import DEFENSES
from .early_stopped_vectors import EarlyStoppedVectorsConfig, EarlyStoppedVectorsDefense


@dataclasses.dataclass
class VariedVectorsConfig(EarlyStoppedVectorsConfig):
    styles: int = dataclasses.field(default=3, metadata={
        "help": "styled copies of each harmful pair (other framings, openers, layouts; none the restyled "
                "attack's); the held-out pairs are checked in a style family never trained on"})
    epochs: float = dataclasses.field(default=4.0, metadata={
        "help": "most passes over the other pairs and their copies (the held-out loss ends training)"})

    def __post_init__(self):
        super().__post_init__()
        if self.styles < 1:
            raise UnlearnableError("varied-vectors styles must be >= 1 (0 is early-stopped-vectors)")


@DEFENSES.register("varied-vectors")
class VariedVectorsDefense(EarlyStoppedVectorsDefense):
    """Early-stopped security vectors trained on the harmful pairs in many styles, their length chosen on held-out
    pairs in styles they never saw: meant to explain harmful behaviour whatever its wording, so that harmful data
    in an unseen style (the ``restyled`` attack) is cheap too. On (frozen) during fine-tuning, off when serving.
    Service threat model only."""

    tradeoff_variants = {"varied": None}

    Config = VariedVectorsConfig

    def vector_config(self) -> VectorConfig:
        return dataclasses.replace(super().vector_config(), styles=self.config.styles)
