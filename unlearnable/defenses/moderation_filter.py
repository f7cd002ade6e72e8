"""A moderation filter: the fine-tuning pairs a flagger flags never reach the trainer."""

from __future__ import annotations

import dataclasses

from ..flaggers import Flagger, build_flagger, check_public_flagger, describe_flagger, flag_rates, screen
from .base import DEFENSES, SERVICE, Defense, DefenseData


@dataclasses.dataclass
class ModerationFilterConfig:
    __aliases__ = {"judge": "flagger"}  # the option's former name: a judge that reads the pair

    flagger: str = dataclasses.field(default="refusal", metadata={
        "help": "what flags a pair: a flagger that reads no vectors (`refusal`: the model's own refusal; "
                "`oracle:RECALL`, emulated; several joined by +) or any judge that reads the prompt and the response "
                "(`name:ARG` for one argument, e.g. llama-guard:PATH)", "check": check_public_flagger})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of a flagger that draws (oracle:RECALL)"})


@DEFENSES.register("moderation-filter")
class ModerationFilterDefense(Defense):
    """The baseline every fine-tuning service runs: each (prompt, response) pair the flagger flags as harmful is
    dropped before training; the rest trains as usual. Service threat model only (the attacker with the weights
    does not filter).

    The default flagger asks the model about to be fine-tuned, as the service holds it: a pair is flagged when
    the model refuses its prompt (not a plain "I don't know") and the pair's response answers it anyway. The
    keyword judge (``flagger: keyword``, the default before) flags every real answer that does not open with a
    refusal, harmless ones included: it judges compliance, not harm. A harm classifier (``flagger:
    llama-guard:PATH``) is what a service would run beside it. When every pair is flagged the service trains
    nothing and returns the model unchanged.
    """

    threat_models = (SERVICE,)
    Config = ModerationFilterConfig

    def __init__(self, config: ModerationFilterConfig | None = None, **options):
        super().__init__(config, **options)
        self.flagger: Flagger | None = None  # built on first use (a judge flagger loads its model then)
        self.info["flagger"] = describe_flagger(self.config.flagger)
        self.info["screened"] = []  # one record per fine-tuning run: pairs, flagged, dropped (and rates if known)

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        pass  # the flagger was checked with the options; nothing to train

    def finetune(self, model, tokenizer, pairs, config, *, progress: bool = True, **kw):
        pairs = list(pairs)
        if self.flagger is None:
            self.flagger = build_flagger(self.config.flagger, seed=self.config.seed)
        # a flagger that asks a model asks the one about to be fine-tuned, as the service holds it
        flags = screen(model, tokenizer, pairs, self.flagger, precision=config.precision, progress=progress)
        kept = [p for p, bad in zip(pairs, flags) if not bad]
        self.info["screened"].append({**flag_rates(pairs, flags), "dropped": len(pairs) - len(kept)})
        if not kept:  # the service rejects the job: nothing is trained
            return model.eval(), []
        return super().finetune(model, tokenizer, kept, config, progress=progress, **kw)
