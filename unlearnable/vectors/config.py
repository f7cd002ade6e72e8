"""How security vectors are built and how strongly they act during fine-tuning."""

from __future__ import annotations

import dataclasses

from ..adapters import LoraSpec
from ..config import normalize_numbers
from ..errors import UnlearnableError
from ..training import TrainConfig
from ..utils import PRECISIONS

#: which held-out check's vectors are kept (vectors.holdout): the lowest held-out loss, or the latest check the
#: held-out pairs cannot tell from the lowest (paired, within one standard error of the difference)
PICKS = ("lowest", "latest-within-1se")

#: the strength of plain :class:`VectorConfig` vectors (the paper's method: all pairs, all epochs) during
#: fine-tuning, picked from the measured trade-off frontier on the default model (docs/results/), not 1.0 by habit
PLAIN_SCALE = 0.75
DEFAULT_SCALE = PLAIN_SCALE  # its former name: the default recipe is :func:`recommended`, at RECOMMENDED_SCALE
BENIGN_MODES = ("none", "distill", "kl")
#: the strength of :func:`recommended` vectors, picked with them from the measured trade-off (docs/guide/tradeoff.md)
RECOMMENDED_SCALE = 1.0


@dataclasses.dataclass
class VectorConfig:
    """How the security vectors are built and how strongly they act during fine-tuning."""

    #: flat key names of earlier versions (also in vectors saved by them), still accepted
    __aliases__ = {"r": "lora.r", "alpha": "lora.alpha", "target_modules": "lora.target_modules",
                   "top_layers": "lora.top_layers"}

    lora: LoraSpec = dataclasses.field(default_factory=LoraSpec, metadata={"help": "the vectors' LoRA shape"})
    lr: float = dataclasses.field(default=1e-3, metadata={"help": "learning rate for training the vectors"})
    epochs: float = dataclasses.field(default=5.0, metadata={"help": "passes over the harmful pairs"})
    target_loss: float = dataclasses.field(default=0.0, metadata={"help": "stop early once the logged training loss "
                                                                         "falls below this (0 = train all epochs)"})
    batch_size: int = 16
    max_length: int = 64
    seed: int = 0
    precision: str = dataclasses.field(default="auto", metadata={"help": "auto | fp32 | bf16", "choices": PRECISIONS})
    scale: float = dataclasses.field(default=PLAIN_SCALE, metadata={
        "help": "strength during fine-tuning: multiplies the vectors' LoRA scaling (0 = off; default picked from "
                "the measured trade-off, docs/guide/tradeoff.md)"})
    benign: str = dataclasses.field(default="none", metadata={
        "help": "benign-preserving training: none | distill (harmless prompts with the model's own answers as "
                "targets) | kl (KL to the vectors-off distribution on those answers)"})
    benign_weight: float = dataclasses.field(default=1.0, metadata={"help": "weight of the KL term (benign=kl)"})
    benign_repeats: int = dataclasses.field(default=1, metadata={"help": "copies of each harmless example"})
    holdout: float = dataclasses.field(default=0.0, metadata={
        "help": "share of the harmful pairs held out to choose the training length: the vectors are kept as they "
                "were at the check with the lowest held-out loss (0 = train on all pairs for the epochs)"})
    styles: int = dataclasses.field(default=0, metadata={
        "help": "styled copies of each harmful pair the vectors train on, in other prompt framings, answer openers "
                "and layouts (vectors.augment.VARIED); with holdout, the held-out pairs are checked in a style "
                "family the training pairs never show (0 = the pairs as given)"})
    holdout_every: int = dataclasses.field(default=2, metadata={"help": "steps between held-out checks (holdout)"})
    patience: int = dataclasses.field(default=3, metadata={
        "help": "held-out checks without a new lowest loss before training stops (holdout)"})
    holdout_pick: str = dataclasses.field(default="lowest", metadata={
        "help": "which held-out check's vectors are kept: lowest (the lowest held-out loss) | latest-within-1se "
                "(the latest check whose held-out loss is within one paired standard error of the lowest)",
        "choices": PICKS})

    def __post_init__(self):
        normalize_numbers(self)
        if self.scale < 0:
            raise UnlearnableError("vector scale must be >= 0")
        if not 0 <= self.holdout < 1 or self.holdout_every < 1 or self.patience < 1:
            raise UnlearnableError("vectors holdout must be in [0, 1), holdout_every and patience >= 1")
        if self.holdout_pick not in PICKS:
            raise UnlearnableError(f"vectors holdout_pick must be one of {', '.join(PICKS)}, not "
                                   f"{self.holdout_pick!r}")
        if self.styles < 0:
            raise UnlearnableError("vectors styles must be >= 0")
        if self.benign not in BENIGN_MODES:
            raise UnlearnableError(f"benign must be none, distill or kl, not {self.benign!r}")

    def train_config(self) -> TrainConfig:
        return TrainConfig(backbone="lora", lr=self.lr, epochs=self.epochs, batch_size=self.batch_size,
                           max_length=self.max_length, seed=self.seed, precision=self.precision)


def recommended() -> VectorConfig:
    """The recipe picked from the measured trade-off (docs/guide/tradeoff.md; the demo's default): vectors
    early-stopped on 20 % of the harmful pairs held out (at most 8 passes, no loss target) at
    :data:`RECOMMENDED_SCALE`. Plain :class:`VectorConfig` defaults stay the paper's method (all pairs, all
    epochs) at :data:`PLAIN_SCALE`."""
    return VectorConfig(lr=2e-3, epochs=8.0, holdout=0.2, scale=RECOMMENDED_SCALE)
