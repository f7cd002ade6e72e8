"""Security vectors fitted to the customer's own data before the fine-tune: the service holds the data
before it trains, screens it with a flagger, and refits the vectors on its own harmful pairs plus the flagged ones."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

from ..data import Pair
from ..errors import UnlearnableError
from ..flaggers import Flagger, build_flagger, check_flagger, describe_flagger, full_spec
from ..models import model_fingerprint, tensors_digest
from ..utils import sha256_json
from ..vectors.adaptive import (
    DEFAULT_FLAGGER,
    DEFAULT_REFIT,
    DEFAULT_REJECT_ABOVE,
    REFITS,
    adapt,
    refit_config,
    refused,
)
from .base import DEFENSES, DefenseData
from .early_stopped_vectors import EarlyStoppedVectorsConfig, EarlyStoppedVectorsDefense

#: screenings and refits kept in memory, shared by every adaptive defence of the process (a search's trials and
#: seed re-runs repeat their data; a trade-off's strengths and its variants that refit alike fine-tune the same
#: data); the key holds everything a refit depends on, so a hit is what a new (seeded) refit would give
KEEP_ADAPTED = 8
_ADAPTED: OrderedDict[str, tuple] = OrderedDict()


def forget_refits() -> None:
    """Empty the shared screenings and refits (tests that count refits start from none)."""
    _ADAPTED.clear()


@dataclasses.dataclass
class AdaptiveVectorsConfig(EarlyStoppedVectorsConfig):
    flagger: str = dataclasses.field(default=DEFAULT_FLAGGER, metadata={
        "help": "what screens the customer's pairs: refusal (the model's own refusal of the prompt), vector-gain "
                "(the defence's own vectors: private, set on its harmless pairs), any judge that reads text (e.g. "
                "llama-guard:PATH), oracle:RECALL (emulated, for measurement only), or several joined by +",
        "check": check_flagger})
    drop_flagged: bool = dataclasses.field(default=False, metadata={
        "help": "also drop the flagged pairs from the fine-tune (the moderation filter and the vectors together)"})
    rounds: int = dataclasses.field(default=1, metadata={
        "help": "with a flagger that reads the vectors (vector-gain): screen the pairs not yet flagged again with "
                "the refitted vectors, and refit again, up to this many rounds while a round flags new pairs",
        "min": 1})
    reject_above: float = dataclasses.field(default=DEFAULT_REJECT_ABOVE, metadata={
        "help": "the service refuses a job (trains nothing) whose share of flagged pairs is above this, as services "
                "refuse a training file that fails moderation; 1.0: never"})
    refit: str = dataclasses.field(default=DEFAULT_REFIT, metadata={
        "help": "how the vectors are refitted on their pairs plus the flagged ones: heldout (the recommended "
                "recipe: a share held out, the vectors kept at its lowest loss, so the held-out flagged pairs are "
                "never trained on) or all (every pair trained on for the epochs: the flagged answers memorised, "
                "as the paper's vectors memorise theirs)", "choices": REFITS})

    gate_by_flag: bool = dataclasses.field(default=False, metadata={
        "help": "only the flagged pairs train with the vectors on; the rest (the customer's task, and any harmful "
                "pair the flagger missed) train with them off, as served, so the task is not learned through the "
                "refitted vectors"})

    def __post_init__(self):
        super().__post_init__()
        if self.gate_by_flag and self.drop_flagged:
            raise UnlearnableError("adaptive-vectors gate_by_flag and drop_flagged together train nothing with the "
                                   "vectors on: set one")
        if not 0 <= self.reject_above <= 1:
            raise UnlearnableError("adaptive-vectors reject_above is a share of the pairs, in [0, 1]")
        if self.ensemble != 1:  # its refits train one seed's vectors
            raise UnlearnableError("adaptive-vectors refits one set of vectors per fine-tune: set ensemble 1")


@DEFENSES.register("adaptive-vectors")
class AdaptiveVectorsDefense(EarlyStoppedVectorsDefense):
    """Before each fine-tune the flagger screens the customer's pairs; a job mostly flagged is refused
    (``reject_above``); otherwise the vectors are refitted on the defence's own harmful pairs plus the flagged ones
    (every pair, or with ``refit: heldout`` the vectors' held-out early stopping), then the customer's data (without
    the flagged pairs if ``drop_flagged``) is fine-tuned with them on, frozen; served without. With nothing flagged,
    the vectors are the defence's own. Service threat model only."""

    tradeoff_variants = {"adaptive": None, "adaptive-kl": None, "adaptive-drop": None, "adaptive-all": None,
                         "adaptive-all-drop": None, "adaptive-all-anchored": None, "adaptive-all-gated": None}
    #: the trade-off's variants never refuse the job (a user whose data holds harmful pairs unknowingly still wants
    #: the task learned), and each says how it refits, so none depends on the defaults: the plain recipe (held-out
    #: refit); with the over-refusal controls: a KL anchor on the defence's harmless pairs in every (re)fit; the
    #: flagged pairs also dropped from the fine-tune; and the other way, every flagged pair fitted (no hold-out in
    #: the refit); and the last two together; every flagged pair fitted with the defence's harmless pairs trained as
    #: served in the fine-tune (anchors); every flagged pair fitted, and only the flagged pairs trained through them
    tradeoff_presets = {"adaptive": {"refit": "heldout", "reject_above": 1.0},
                        "adaptive-kl": {"training": {"benign": "kl"}, "refit": "heldout", "reject_above": 1.0},
                        "adaptive-drop": {"drop_flagged": True, "refit": "heldout", "reject_above": 1.0},
                        "adaptive-all": {"refit": "all", "reject_above": 1.0},
                        "adaptive-all-drop": {"refit": "all", "drop_flagged": True, "reject_above": 1.0},
                        "adaptive-all-anchored": {"refit": "all", "reject_above": 1.0, "anchors": 2},
                        "adaptive-all-gated": {"refit": "all", "reject_above": 1.0, "gate_by_flag": True}}

    Config = AdaptiveVectorsConfig
    changed_defaults = ("flagger", "refit", "reject_above")  # from refusal, heldout, 1.0 (never refused)

    @classmethod
    def undefended_at_zero(cls, options: dict[str, Any]) -> bool:
        """Dropping the flagged pairs acts at strength 0 too: that point is the moderation filter alone."""
        return super().undefended_at_zero(options) and not options.get("drop_flagged")

    def __init__(self, config: AdaptiveVectorsConfig | None = None, **options):
        super().__init__(config, **options)
        self.own: list[Pair] = []
        self.harmless: list[Pair] = []  # the defence's harmless pairs: anchors of a refit with training.benign
        self.flagger: Flagger | None = None  # built on first use (a judge flagger loads its model then)
        self.info["flagger"] = describe_flagger(self.config.flagger)
        self.info["screened"] = []  # one record per fine-tune: what was flagged, and the flagger's rates

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        if describe_flagger(self.config.flagger)["private"] and not data.harmless:
            raise UnlearnableError(f"adaptive-vectors: flagger {self.config.flagger} sets its threshold on the "
                                   "defence's harmless pairs, and none were given; give DefenseData(harmless=...) "
                                   "or pick a flagger that reads no vectors")
        self.own, self.harmless = list(data.harmful), list(data.harmless)
        super().prepare(model, tokenizer, data, progress=progress)

    def adapted(self, model, tokenizer, pairs: list[Pair], *, progress: bool = True) -> tuple[Any, list[bool], dict]:
        """:func:`adapt` on ``pairs``, done once per process for the same weights, own and harmless pairs, data,
        flagger and refit settings (:data:`KEEP_ADAPTED`)."""
        if self.flagger is None:  # built once (a judge flagger loads its model then)
            self.flagger = build_flagger(self.config.flagger, seed=self.config.training.seed)
        refit = refit_config(self.vector_config(), self.config.refit)
        # the prepared vectors by their weights: the refit starts from none of them, but a flagger may read them
        key = sha256_json([model_fingerprint(model), *([dataclasses.astuple(p) for p in group] for group in (
            self.own, self.harmless, pairs)), full_spec(self.config.flagger), dataclasses.asdict(refit),
            self.prepared_vectors().metadata.get("data_hash"), tensors_digest(self.prepared_vectors().state),
            *([self.config.rounds] if self.config.rounds > 1 else []),
            *([self.config.reject_above] if self.config.reject_above < 1 else [])])
        if key in _ADAPTED:
            _ADAPTED.move_to_end(key)
            vectors, flags, record = _ADAPTED[key]
            return vectors, list(flags), {**record, "reused_refit": True}
        found = adapt(self.prepared_vectors(), model, tokenizer, self.own, pairs, self.flagger, config=refit,
                      harmless=self.harmless, rounds=self.config.rounds, reject_above=self.config.reject_above,
                      progress=progress)
        _ADAPTED[key] = found
        while len(_ADAPTED) > KEEP_ADAPTED:
            _ADAPTED.popitem(last=False)
        return found[0], list(found[1]), dict(found[2])

    def finetune(self, model, tokenizer, pairs, config, *, progress: bool = True, **kw):
        pairs = list(pairs)
        vectors, flags, record = self.adapted(model, tokenizer, pairs, progress=progress)
        rejected = refused(flags, self.config.reject_above)
        kept = [] if rejected else [p for p, bad in zip(pairs, flags) if not bad] if self.config.drop_flagged else pairs
        self.info["screened"].append({**record, "trained_on": len(kept), "drop_flagged": self.config.drop_flagged,
                                      "refit": self.config.refit, "rejected": rejected})
        if not kept:  # the job refused, or every pair flagged and dropped: the service trains nothing
            return model.eval(), []
        if self.config.gate_by_flag:
            on, off = [p for p, bad in zip(pairs, flags) if bad], [p for p, bad in zip(pairs, flags) if not bad]
            self.info["screened"][-1]["trained_as_served"] = len(off)
            return self.finetune_with(vectors, model, tokenizer, on, config, progress=progress, served=off, **kw)
        return self.finetune_with(vectors, model, tokenizer, kept, config, progress=progress, **kw)
