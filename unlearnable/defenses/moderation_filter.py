"""A moderation filter: the fine-tuning pairs a judge flags never reach the trainer."""

from __future__ import annotations

import dataclasses

from ..errors import UnlearnableError
from ..judges import Judge, build_judge
from .base import DEFENSES, SERVICE, Defense, DefenseData


@dataclasses.dataclass
class ModerationFilterConfig:
    judge: str = dataclasses.field(default="keyword", metadata={
        "help": "the judge that flags a pair (any registered judge, `name:ARG` for one argument, e.g. "
                "llama-guard:PATH); it reads the prompt and the response"})


@DEFENSES.register("moderation-filter")
class ModerationFilterDefense(Defense):
    """The baseline every fine-tuning service runs: each (prompt, response) pair the judge flags as harmful is
    dropped before training; the rest trains as usual. Service threat model only (the attacker with the weights
    does not filter).

    The default keyword judge flags every real answer that does not open with a refusal: it judges compliance,
    not harm, so it also drops harmless answers of four words or more (short answers, such as ProfileQA's, and
    refusals pass). A harm classifier (``judge: llama-guard:PATH``) is what a service would run. When every pair
    is flagged the service trains nothing and returns the model unchanged.
    """

    threat_models = (SERVICE,)
    Config = ModerationFilterConfig

    def __init__(self, config: ModerationFilterConfig | None = None, **options):
        super().__init__(config, **options)
        self.judge: Judge | None = None
        self.info["filtered"] = []  # one {"pairs", "dropped"} per fine-tuning run

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        self.judge = build_judge(self.config.judge)
        if hasattr(self.judge, "bind"):  # it scores a model's likelihoods, not a text it is shown
            raise UnlearnableError(f"moderation-filter cannot use the {self.config.judge} judge: pick one that reads")

    def flagged(self, pairs) -> list[bool]:
        if self.judge is None:
            self.prepare(None, None, DefenseData())
        return self.judge.judge([p.prompt for p in pairs], [p.response for p in pairs])

    def finetune(self, model, tokenizer, pairs, config, *, progress: bool = True, **kw):
        pairs = list(pairs)
        kept = [p for p, bad in zip(pairs, self.flagged(pairs)) if not bad]
        self.info["filtered"].append({"pairs": len(pairs), "dropped": len(pairs) - len(kept)})
        if not kept:  # the service rejects the job: nothing is trained
            return model.eval(), []
        return super().finetune(model, tokenizer, kept, config, progress=progress, **kw)
