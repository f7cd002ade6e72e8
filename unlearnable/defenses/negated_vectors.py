"""Early-stopped security vectors, served negated: subtracted from the released model."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

from ..errors import UnlearnableError
from ..vectors import finetune, serving
from .base import DEFENSES, Tunable
from .early_stopped_vectors import EarlyStoppedVectorsConfig, EarlyStoppedVectorsDefense


@dataclasses.dataclass
class NegatedVectorsConfig(EarlyStoppedVectorsConfig):
    serve_scale: float = dataclasses.field(default=-0.25, metadata={
        "help": "the vectors' strength in the served model, < 0: subtracted, pushing it away from the harmful "
                "behaviour they learned (and towards refusing, harmless prompts too: see docs/guide/tradeoff.md)"})

    def __post_init__(self):
        super().__post_init__()
        if not self.serve_scale < 0:
            raise UnlearnableError("negated-vectors serve_scale must be < 0 (0 serves them off: "
                                   "early-stopped-vectors)")
        if self.anchors or self.refusal_anchors or self.spread_mixed:  # anchors train vectors-off, never served here
            raise UnlearnableError("negated-vectors takes no anchors: they train with the vectors off, and it serves "
                                   "them subtracted; set anchors and refusal_anchors 0 (and spread_mixed false)")


@DEFENSES.register("negated-vectors")
class NegatedVectorsDefense(EarlyStoppedVectorsDefense):
    """Early-stopped security vectors, on (frozen) during fine-tuning as usual, and subtracted when serving
    (``serve_scale`` < 0; task arithmetic's negation, Ilharco et al. 2023): what the backbone still learned of
    the harmful behaviour is pushed back by the vectors that explain it. The served model is every model this
    defence serves, the one it has not fine-tuned included. Service threat model only."""

    tradeoff_variants = {"negated": None}

    Config = NegatedVectorsConfig
    serves_weights_as_given = False
    revision = 1  # it refuses anchors: the fix that made its family's revision 2 changes nothing here

    def tuning_space(self) -> dict[str, Tunable]:
        """Its parent's, less the anchors it refuses."""
        return {k: t for k, t in super().tuning_space().items() if k not in ("anchors", "refusal_anchors")}

    def finetune(self, model, tokenizer, pairs, config, *, progress: bool = True, **kw):
        # the vectors stay an adapter branch, so a curve point mid-run can serve them negated
        return finetune(model, tokenizer, pairs, config, vectors=self.prepared_vectors(), scale=self.scale,
                        progress=progress, fold=False, **kw)

    @contextlib.contextmanager
    def serving(self, model) -> Iterator[None]:
        # mid-fine-tune: the carried vectors at serve_scale; released or untouched: the defence's own put in
        with serving(model, self.config.serve_scale, vectors=self.prepared_vectors()):
            yield
