"""Security vectors whose training length is chosen on held-out harmful pairs."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from ..data import Pair, mixed_copies
from ..errors import UnlearnableError
from ..vectors import SecurityVectors, VectorConfig, finetune
from ..vectors.config import PICKS
from .base import DEFENSES, DefenseData, spread_option, tunable, with_rows_added
from .security_vectors import SecurityVectorsConfig, SecurityVectorsDefense


@dataclasses.dataclass
class EarlyStoppedVectorsConfig(SecurityVectorsConfig):
    holdout: float = dataclasses.field(default=0.2, metadata={
        "help": "share of the defence's harmful pairs held out: the vectors are kept at the check where their "
                "loss is lowest"})
    epochs: float = dataclasses.field(default=8.0, metadata={
        "help": "most passes over the other pairs (the held-out loss, not a loss target, ends training)"})
    pick: str = dataclasses.field(default="lowest", metadata={
        "help": "which held-out check's vectors are kept: lowest | latest-within-1se (the longest-trained check "
                "the held-out pairs cannot tell from the lowest)", "choices": PICKS})
    anchors: int = tunable(0, 0, 4, log=False, integer=True, min=0, help=(
        "copies of each of the defence's harmless pairs mixed into the customer's fine-tune, trained with the "
        "vectors off (as served): the served model is held to answering harmless prompts while the harmful data "
        "trains through the vectors; 0: none"))
    refusal_anchors: int = tunable(0, 0, 2, log=False, integer=True, min=0, help=(
        "copies of each of the defence's refusal pairs (harmful prompts of its own with refusals) mixed into the "
        "customer's fine-tune, trained with the vectors off (as served): harmless anchors teach the served model "
        "to answer, and that spreads to harmful prompts; these hold its refusals; 0: none"))
    ensemble: int = dataclasses.field(default=1, metadata={
        "help": "vectors trained with this many seeds (the training seed and the next ones), each kept at its own "
                "held-out check, and served as one whose weight change is their mean: the vectors' seed moves "
                "harm as much as the data do; 1: one training", "min": 1})
    spread_mixed: bool = spread_option()

    def __post_init__(self):
        if not 0 < self.holdout < 1 or self.epochs <= 0 or self.anchors < 0 or self.refusal_anchors < 0:
            raise UnlearnableError("early-stopped-vectors holdout must be in (0, 1), epochs > 0, and anchors and "
                                   "refusal_anchors >= 0")
        if self.ensemble < 1:
            raise UnlearnableError("early-stopped-vectors ensemble is how many seeds' vectors are averaged: >= 1")
        if self.pick not in PICKS:
            raise UnlearnableError(f"early-stopped-vectors pick must be one of {', '.join(PICKS)}, not {self.pick!r}")


@DEFENSES.register("early-stopped-vectors")
class EarlyStoppedVectorsDefense(SecurityVectorsDefense):
    """Security vectors trained on most of the defence's harmful pairs and kept as they were when the rest, held
    out, had their lowest loss: fitted to what they generalise to rather than memorising their own answers; on
    (frozen) during fine-tuning, off when serving. Service threat model only."""

    tradeoff_variants = {"early-stopped": None, "early-stopped-anchored": None, "early-stopped-1se": None,
                         "early-stopped-anchored-refusals": None, "early-stopped-ensemble": None}
    #: the over-refusal control: the defence's harmless pairs, twice each, trained as served (and with its refusal
    #: pairs once each beside them); the longest training the held-out loss cannot tell from its lowest; and the
    #: mean of three seeds' vectors
    tradeoff_presets = {"early-stopped-anchored": {"anchors": 2}, "early-stopped-1se": {"pick": "latest-within-1se"},
                        "early-stopped-anchored-refusals": {"anchors": 2, "refusal_anchors": 1},
                        "early-stopped-ensemble": {"ensemble": 3}}

    Config = EarlyStoppedVectorsConfig
    revision = 2  # the anchors stopped taking a step-counted fine-tune's steps

    def __init__(self, config=None, *, vectors=None, **options):
        super().__init__(config, vectors=vectors, **options)
        self.anchor_pairs: list[Pair] = []
        self.refusal_pairs: list[Pair] = []

    @classmethod
    def undefended_at_zero(cls, options: dict[str, Any]) -> bool:
        """The anchors act at strength 0 too: that point is the anchors alone."""
        return (super().undefended_at_zero(options) and not options.get("anchors")
                and not options.get("refusal_anchors"))

    def vector_config(self) -> VectorConfig:
        """How the vectors train: the harness's vector settings with this defence's hold-out and length."""
        c = self.config
        return dataclasses.replace(c.training, holdout=c.holdout, epochs=c.epochs, target_loss=0.0,
                                   holdout_pick=c.pick)

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        if self.config.anchors and not data.harmless:
            raise UnlearnableError(f"{self.name}: anchors {self.config.anchors} needs the defence's harmless pairs, "
                                   "and none were given; give DefenseData(harmless=...) or set anchors 0")
        if self.config.refusal_anchors and not data.refusals:
            raise UnlearnableError(f"{self.name}: refusal_anchors {self.config.refusal_anchors} needs the defence's "
                                   "refusal pairs, and none were given; give DefenseData(refusals=...) or set "
                                   "refusal_anchors 0")
        self.anchor_pairs = list(data.harmless) if self.config.anchors else []
        self.refusal_pairs = list(data.refusals) if self.config.refusal_anchors else []
        if self.vectors is None:
            self.vectors = self.train_vectors(model, tokenizer, data, progress=progress)
        super().prepare(model, tokenizer, data, progress=progress)

    def train_vectors(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> SecurityVectors:
        """The vectors of each of ``ensemble`` seeds, averaged (one training where ``ensemble`` is 1)."""
        config = self.vector_config()
        members = [SecurityVectors.train(model, tokenizer, list(data.harmful),
                                         dataclasses.replace(config, seed=config.seed + i), progress=progress,
                                         harmless=list(data.harmless)) for i in range(self.config.ensemble)]
        return SecurityVectors.mean(members)

    def untunable(self, data: DefenseData) -> set[str]:
        """Anchors without the pairs they copy."""
        return {*(() if data.harmless else ("anchors",)), *(() if data.refusals else ("refusal_anchors",))}

    def served_anchors(self) -> list[Pair]:
        """The pairs the fine-tune trains with the vectors off: ``anchors`` copies of the defence's harmless ones and
        ``refusal_anchors`` copies of its refusal pairs."""
        return (mixed_copies(self.anchor_pairs, self.config.anchors)
                + mixed_copies(self.refusal_pairs, self.config.refusal_anchors))

    def finetune_with(self, vectors, model, tokenizer, pairs, config, *, progress: bool = True,
                      served: Sequence[Pair] = (), **kw):
        """The customer's ``pairs`` fine-tuned with ``vectors`` on, frozen, beside ``served`` pairs (the customer's
        too) and the anchors, both trained with the vectors off."""
        anchors = self.served_anchors()
        customer = len(pairs) + len(served)
        served = [*served, *anchors]
        if anchors:
            config = with_rows_added(config, customer, len(anchors), spread=self.config.spread_mixed)
            refusals = {"refusal_pairs": len(self.refusal_pairs), "refusal_copies": self.config.refusal_anchors}
            self.info.setdefault("anchors", []).append({
                "pairs": len(self.anchor_pairs), "copies": self.config.anchors,
                **(refusals if self.refusal_pairs else {}), "customer_pairs": customer,
                **({"max_steps": config.max_steps} if config.max_steps > 0 else {})})
        return finetune(model, tokenizer, pairs, config, vectors=vectors, scale=self.scale, progress=progress,
                        served=served, **kw)

    def finetune(self, model, tokenizer, pairs, config, *, progress: bool = True, **kw):
        return self.finetune_with(self.prepared_vectors(), model, tokenizer, pairs, config, progress=progress, **kw)
