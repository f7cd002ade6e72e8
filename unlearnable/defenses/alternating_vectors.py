"""Alternating (min-min) security vectors: re-fitted to the backbone during the fine-tune."""

from __future__ import annotations

import dataclasses
import functools

from ..data import encode_pair
from ..errors import UnlearnableError
from ..vectors import finetune
from ..vectors.alternating import AlternatingTrainer
from .base import DEFENSES, DefenseData
from .security_vectors import SecurityVectorsConfig, SecurityVectorsDefense


@dataclasses.dataclass
class AlternatingVectorsConfig(SecurityVectorsConfig):
    every: int = dataclasses.field(default=8, metadata={"help": "re-fit the vectors every this many backbone steps"})
    refit_steps: int = dataclasses.field(default=4, metadata={"help": "at most this many vector steps per re-fit"})
    refit_lr: float = dataclasses.field(default=1e-3, metadata={"help": "the vectors' learning rate in a re-fit"})
    refit_target_loss: float = dataclasses.field(default=0.15, metadata={
        "help": "a re-fit stops once the vectors' loss on their harmful data is at most this"})

    def __post_init__(self):
        if self.every < 1 or self.refit_steps < 1:
            raise UnlearnableError("alternating-vectors every and refit_steps must be >= 1")


@DEFENSES.register("alternating-vectors")
class AlternatingVectorsDefense(SecurityVectorsDefense):
    """Security vectors re-fitted every ``every`` steps of the fine-tune to the backbone as it is then (the
    min-min of Zhou et al.), on the defence's own harmful pairs, frozen between re-fits; off when serving."""

    tradeoff_variants = {"alternating": "none"}

    Config = AlternatingVectorsConfig

    def __init__(self, config=None, *, vectors=None, **options):
        super().__init__(config, vectors=vectors, **options)
        self.harmful: list = []

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        super().prepare(model, tokenizer, data, progress=progress)
        self.harmful = list(data.harmful)

    def finetune(self, model, tokenizer, pairs, config, *, progress: bool = True, **kw):
        vectors = self.prepared_vectors()
        if not self.harmful:
            raise RuntimeError(f"{self.name} defence used before prepare() with harmful pairs")
        c = self.config
        rows = [encode_pair(tokenizer, p, config.max_length) for p in self.harmful]
        trainer = functools.partial(AlternatingTrainer, harmful=rows, every=c.every, steps=c.refit_steps,
                                    lr=c.refit_lr, target_loss=c.refit_target_loss, seed=config.seed)
        tuned, history = finetune(model, tokenizer, pairs, config, vectors=vectors, scale=self.scale,
                                  progress=progress, fold=False, trainer_class=trainer, **kw)
        refits = [h for h in history if "refit_steps" in h]
        self.info.setdefault("refits", []).append({"refits": len(refits),
                                                   "steps": sum(int(h["refit_steps"]) for h in refits)})
        return tuned, history
