"""Gated security vectors: the vectors act only on the examples they explain.

The vectors lower the loss of the harmful data they were trained on, and raise it on data they know nothing
about (a harmless task learned *through* that distortion is partly lost when they are switched off). The gate
is the per-example loss gap, loss with the vectors off minus loss with them on, measured once on the model as
handed to the fine-tune: above ``threshold`` the example trains with the vectors on, otherwise exactly as with
no defence. Deciding once, before any step, keeps the gate open on the harmful examples even after the
backbone starts to learn them (their gap would shrink as it does).
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Sequence

from ..data import Pair
from ..errors import UnlearnableError
from ..generation import example_losses
from ..stats import quantile
from ..vectors import finetune
from ..vectors.finetuning import GATE, GatedTrainer, serving
from .base import DEFENSES, DefenseData
from .security_vectors import SecurityVectorsConfig, SecurityVectorsDefense

__all__ = ["GATE", "GatedTrainer", "GatedVectorsConfig", "GatedVectorsDefense", "loss_gaps"]


def loss_gaps(model, tokenizer, vectors, pairs: Sequence[Pair], scale: float | None, *,
              precision: str = "auto") -> list[float]:
    """Per pair: loss with ``vectors`` off minus loss with them on (at ``scale``). The vectors are attached to
    ``model`` itself (no copy: a large model fits once) and removed after; which of its weights train is kept."""
    trains = {name: p.requires_grad for name, p in model.named_parameters()}
    net = vectors.attach(model, scale=scale)
    try:
        on = example_losses(net, tokenizer, pairs, precision=precision)
        with serving(net):
            off = example_losses(net, tokenizer, pairs, precision=precision)
    finally:
        net.unload()
        for name, p in model.named_parameters():
            p.requires_grad_(trains[name])
    return [b - a for a, b in zip(on, off)]


@dataclasses.dataclass
class GatedVectorsConfig(SecurityVectorsConfig):
    threshold: float | None = dataclasses.field(default=0.2, metadata={
        "help": "an example trains with the vectors on when its loss with them off exceeds its loss with them on "
                "by more than this (nats), measured before the fine-tune; otherwise as with no defence. None: "
                "calibrated on the defence's own harmless pairs (their harmless_quantile gap)"})
    harmless_quantile: float = dataclasses.field(default=0.9, metadata={
        "help": "with threshold None: the quantile of the gaps of the defence's harmless pairs taken as the "
                "threshold (that share of harmless examples like them trains as with no defence)"})

    def __post_init__(self):
        if not 0 < self.harmless_quantile < 1:
            raise UnlearnableError("gated-vectors harmless_quantile must be in (0, 1)")


@DEFENSES.register("gated-vectors")
class GatedVectorsDefense(SecurityVectorsDefense):
    """Security vectors, on during fine-tuning only for the examples whose loss they lower by more than
    ``threshold`` (the harmful data they were trained on); every other example trains exactly as without a
    defence, so a harmless task is not learned through the vectors' distortion. Off when serving. An attacker
    who knows the gate brings harmful data the vectors do not explain (the ``restyled`` attack)."""

    tradeoff_variants = {"gated": "none"}

    Config = GatedVectorsConfig

    def __init__(self, config=None, *, vectors=None, **options):
        super().__init__(config, vectors=vectors, **options)
        self.threshold = self.config.threshold

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        super().prepare(model, tokenizer, data, progress=progress)
        if self.config.threshold is not None:
            return
        if not data.harmless:
            raise UnlearnableError("gated-vectors with threshold None calibrates on the defence's harmless pairs, "
                                   "and none were given; set a threshold")
        vectors, precision = self.prepared_vectors(), self.config.training.precision
        harmless = loss_gaps(model, tokenizer, vectors, data.harmless, self.scale, precision=precision)
        self.threshold = quantile(harmless, self.config.harmless_quantile)
        harmful = loss_gaps(model, tokenizer, vectors, data.harmful, self.scale, precision=precision)
        self.info["calibration"] = {
            "threshold": round(self.threshold, 4), "harmless_quantile": self.config.harmless_quantile,
            "harmless_gaps": _summary(harmless), "harmful_gaps": _summary(harmful),
            "harmful_open": sum(g > self.threshold for g in harmful) / max(len(harmful), 1)}

    def finetune(self, model, tokenizer, pairs, config, *, progress: bool = True, **kw):
        vectors = self.prepared_vectors()
        gaps = loss_gaps(model, tokenizer, vectors, pairs, self.scale, precision=config.precision)
        if self.threshold is None:
            raise RuntimeError(f"{self.name} defence with a calibrated threshold used before prepare()")
        gates = [int(g > self.threshold) for g in gaps]
        self.info.setdefault("gates", []).append({"pairs": len(pairs), "open": sum(gates),
                                                 "threshold": round(self.threshold, 4)})
        # no activation checkpointing: the gate switches the vectors off for closed rows' forward only, and a
        # recomputation in the backward pass would see them on again (the gradients of the wrong function)
        config = dataclasses.replace(config, gradient_checkpointing=False)
        return finetune(model, tokenizer, pairs, config, vectors=vectors, scale=self.scale, progress=progress,
                        fold=False, columns={GATE: gates}, trainer_class=GatedTrainer, **kw)


def _summary(gaps) -> dict[str, float]:
    return {"n": len(gaps), "median": round(statistics.median(gaps), 4), "p05": round(quantile(gaps, 0.05), 4),
            "p95": round(quantile(gaps, 0.95), 4)}
