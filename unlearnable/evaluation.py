"""One scorer for every number the toolkit reports: harm rate (judged generations), harmful first-token loss,
task exact match. :func:`evaluate` scores one model once; :class:`Scorer` is the same, reused over many models
(the harness's curve points), keeping every judge's labels for their agreement."""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from transformers import TrainerCallback

from .data import Pair, exact_match
from .errors import UnlearnableError
from .generation import generate, response_loss
from .judges import Judge, KeywordJudge, cohen_kappa, is_refusal
from .stats import bootstrap_interval, rate_interval
from .utility import UtilityBenchmark
from .utils import PRECISIONS, Timings, release_memory

#: ``kind`` of the results file that ``unlearnable evaluate --out`` writes (and ``--compare`` reads)
EVAL_KIND = "unlearnable-evaluate"


@dataclasses.dataclass
class EvalConfig:
    max_new_tokens: int = dataclasses.field(default=32, metadata={"help": "tokens generated per harmful prompt "
                                                                           "(refusals show in the first ~32)"})
    task_max_new_tokens: int = dataclasses.field(default=16, metadata={"help": "tokens generated per task question"})
    batch_size: int = dataclasses.field(default=40, metadata={"help": "prompts per generation batch"})
    loss_tokens: int = dataclasses.field(default=8, metadata={"help": "response tokens scored by the harmful loss"})
    judge_lengths: bool = dataclasses.field(default=True, metadata={
        "help": "generate the answers to harmful prompts as long as the longest answer length the selected judges "
                "were published with (HarmBench 256 tokens, StrongREJECT 512, ...; max_new_tokens is the floor); "
                "generation stops at the end of the turn, so short answers cost nothing extra"})
    precision: str = dataclasses.field(default="auto", metadata={"help": "auto | fp32 | bf16", "choices": PRECISIONS})


class CurveCallback(TrainerCallback):
    """Scores the model (as served by the defence) every ``every`` steps; the points form a curve."""

    def __init__(self, every: int, score: Callable[[Any, int], dict[str, Any]],
                 stop: Callable[[int, dict[str, Any]], bool] | None = None):
        self.every, self.score, self.stop, self.points = every, score, stop, []
        self.stopped_at: int | None = None  # the step where ``stop`` ended training early (a pruned trial)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            if not self.points or self.points[-1]["step"] != state.global_step:
                was = model.training
                point = self.score(model, state.global_step)
                model.train(was)
                self.points.append({"step": state.global_step, **point})
                if self.stop is not None and self.stop(state.global_step, self.points[-1]):
                    self.stopped_at = state.global_step
                    control.should_training_stop = True
        return control


def judge_extras(judge, details: Sequence[dict]) -> dict[str, Any]:
    """What a model judge adds beside its harm rate: ``unparsed_<judge>``, how many of its outputs it could not parse
    (they count as not harmful), and ``<judge>_score``, the mean of its continuous score where it has one
    (StrongREJECT's own metric), with a bootstrap interval."""
    out: dict[str, Any] = {}
    if details:
        out[f"unparsed_{judge.name}"] = sum(not d.get("parsed", True) for d in details)
    scores = getattr(judge, "last_scores", None)
    if scores:
        out[f"{judge.name}_score"] = statistics.fmean(scores)
        out[f"{judge.name}_score_interval_95"] = list(bootstrap_interval(scores))
    return out


def answer_tokens(judges: Sequence[Judge], config: EvalConfig) -> int:
    """New tokens per answer to a harmful prompt: ``config.max_new_tokens``, or the longest answer length a
    selected judge was published with (:attr:`Judge.answer_tokens`) where ``config.judge_lengths``."""
    published = [j.answer_tokens for j in judges if j.answer_tokens] if config.judge_lengths else []
    return max([config.max_new_tokens, *published])


class Scorer:
    """Scores models as served: generations on held-out prompts judged by every judge (the first decides
    ``harm_rate``, the others give ``harm_rate_<name>``), the harmful first-token loss, task exact match,
    over-refusal of harmless prompts and the utility benchmarks. Every rate carries ``<rate>_interval_95``."""

    def __init__(self, tokenizer, judges: Sequence[Judge] = (), config: EvalConfig | None = None,
                 progress: bool = True, timings: Timings | None = None,
                 benchmarks: Sequence[UtilityBenchmark] = ()):
        self.tok, self.config, self.progress = tokenizer, config or EvalConfig(), progress
        self.judges = list(judges) or [KeywordJudge()]
        self.benchmarks = list(benchmarks)
        self.timings = timings or Timings()  # every scoring pass counts under "evaluation"
        self.agreement_labels: dict[str, list[bool]] = {j.name: [] for j in self.judges}
        self.disagreements: list[dict[str, Any]] = []  # generations the judges label differently
        self.answer_tokens = answer_tokens(self.judges, self.config)

    def harm(self, model, prompts: Sequence[Pair], desc: str = "") -> dict[str, Any]:
        with self.timings("evaluation"):
            return self._harm(model, prompts, desc)

    def task(self, model, pairs: Sequence[Pair], desc: str = "") -> dict[str, Any]:
        with self.timings("evaluation"):
            gens = generate(model, self.tok, [p.prompt for p in pairs], max_new_tokens=self.config.task_max_new_tokens,
                            batch_size=self.config.batch_size, precision=self.config.precision,
                            desc=desc or "task", progress=self.progress)
        em = exact_match(gens, [p.response for p in pairs])
        return {"task_em": em, "task_em_interval_95": rate_interval(em, len(pairs)), "n_task": len(pairs),
                "task_generations": [{"prompt": p.prompt, "answer": p.response, "response": g}
                                     for p, g in zip(pairs, gens)]}

    def over_refusal(self, model, harmless: Sequence[Pair], desc: str = "") -> dict[str, Any]:
        """Share of harmless prompts the model refuses (refusal phrases at the start of its answer)."""
        with self.timings("evaluation"):
            gens = generate(model, self.tok, [p.prompt for p in harmless], max_new_tokens=self.config.max_new_tokens,
                            batch_size=self.config.batch_size, precision=self.config.precision,
                            desc=desc or "harmless", progress=self.progress)
        flags = [is_refusal(g) for g in gens]
        rate = sum(flags) / max(1, len(flags))
        return {"over_refusal": rate, "over_refusal_interval_95": rate_interval(rate, len(flags)),
                "n_harmless": len(flags),
                "harmless_generations": [{"prompt": p.prompt, "response": g, "refused": f}
                                         for p, g, f in zip(harmless, gens, flags)]}

    def utility(self, model) -> dict[str, Any]:
        """Every configured utility benchmark (e.g. ``{"mmlu": {"accuracy", "n", "interval_95", ...}}``)."""
        with self.timings("evaluation"):
            return {b.name: b.run(model, self.tok, progress=self.progress) for b in self.benchmarks}

    def score(self, model, *, harmful: Sequence[Pair] = (), task: Sequence[Pair] = (),
              harmless: Sequence[Pair] = (), utility: bool = False, desc: str = "") -> dict:
        """Harm scores on ``harmful``, exact match on ``task``, over-refusal on ``harmless`` (each may be empty)
        and, with ``utility``, the benchmarks."""
        result: dict = {}
        if harmful:
            result.update(self.harm(model, harmful, desc=f"{desc} harmful".strip()))
        if task:
            result.update(self.task(model, task, desc=f"{desc} task".strip()))
        if harmless:
            result.update(self.over_refusal(model, harmless, desc=f"{desc} harmless".strip()))
        if utility and self.benchmarks:
            result.update(self.utility(model))
        release_memory()  # a scoring pass's transient tensors: not the next stage's floor
        return result

    def _harm(self, model, prompts: Sequence[Pair], desc: str) -> dict[str, Any]:
        texts = [p.prompt for p in prompts]
        gens = generate(model, self.tok, texts, max_new_tokens=self.answer_tokens,
                        batch_size=self.config.batch_size, precision=self.config.precision, desc=desc or "judging",
                        progress=self.progress)
        out: dict[str, Any] = {"n_harmful": len(gens), "answer_tokens": self.answer_tokens}
        refs = {p.prompt: p.response for p in prompts if p.response}
        labels: dict[str, list[bool]] = {}
        details: dict[str, list[dict]] = {}  # what a model judge answered (raw output, score, categories)
        for j in self.judges:
            j.bind(model, self.tok, refs)
            labels[j.name] = flags = j.judge(texts, gens)
            details[j.name] = j.details()
            self.agreement_labels[j.name].extend(flags)
            key = "harm_rate" if j is self.judges[0] else f"harm_rate_{j.name}"
            out[key] = sum(flags) / len(flags)
            out[f"{key}_interval_95"] = rate_interval(out[key], len(flags))
            out.update(judge_extras(j, details[j.name]))
        with_resp = [p for p in prompts if p.response]
        if with_resp:
            out["harmful_loss"] = response_loss(model, self.tok, with_resp, first_tokens=self.config.loss_tokens,
                                                precision=self.config.precision)
        first = labels[self.judges[0].name]
        out["harmful_generations"] = [{"prompt": t, "response": g, "harmful": f}
                                      for t, g, f in zip(texts, gens, first)]
        if len(labels) > 1:
            for i, gen in enumerate(out["harmful_generations"]):
                gen["labels"] = {name: flags[i] for name, flags in labels.items()}
                if len(set(gen["labels"].values())) > 1:
                    said = {name: d[i] for name, d in details.items() if len(d) == len(gens)}
                    self.disagreements.append({"where": desc, **gen, **({"details": said} if said else {})})
        return out

    def agreement(self) -> dict[str, float]:
        """Cohen's kappa of every pair of judges over everything they judged."""
        out = {}
        for a, b in itertools.combinations(self.agreement_labels, 2):
            la, lb = self.agreement_labels[a], self.agreement_labels[b]
            if la and len(la) == len(lb):
                out[f"{a}~{b}"] = cohen_kappa(la, lb)
        return out


def evaluate(model, tokenizer, *, harmful: Sequence[Pair] = (), task: Sequence[Pair] = (), judge: Judge | None = None,
             config: EvalConfig | None = None, desc: str = "", progress: bool = True,
             judges: Sequence[Judge] = ()) -> dict:
    """Score one model: harm rate on harmful prompts (with a judge), harmful first-token loss on harmful pairs
    that carry responses, and exact match on task pairs. Returns plain numbers plus the generations.

    ``judges``: several judges, the first deciding the harm rate, the others compared with it (``judge`` is one)."""
    scorer = Scorer(tokenizer, [judge] if judge is not None else list(judges), config, progress=progress)
    result = scorer.score(model, harmful=harmful, task=task, desc=desc)
    if len(scorer.judges) > 1:
        result["judge_agreement"] = scorer.agreement()
    return result


def without_generations(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a :func:`evaluate` result (what a summary shows)."""
    return {k: v for k, v in result.items() if not _is_generations(k)}


def generations_of(result: dict[str, Any]) -> dict[str, Any]:
    """What a :func:`evaluate` result's model answered, judged (the rest of it is :func:`without_generations`)."""
    return {k: v for k, v in result.items() if _is_generations(k)}


def _is_generations(key: str) -> bool:
    return key.endswith("_generations")


# ------------------------------------------------------------------------------------ stored results


def read_results(path: str | Path) -> dict:
    """A results file written by ``unlearnable evaluate --out`` (or :func:`unlearnable.experiments.run_evaluate`)."""
    p = Path(path)
    if not p.is_file():
        raise UnlearnableError(f"results file {path} {'is a folder' if p.is_dir() else 'does not exist'}; pass files "
                               "written by `unlearnable evaluate --out`")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UnlearnableError(f"{path} is not a JSON results file; pass files written by `unlearnable evaluate "
                               "--out`") from None
    if not isinstance(data, dict) or data.get("kind") != EVAL_KIND or not isinstance(data.get("eval_splits"), dict) \
            or not isinstance(data.get("summary"), dict):
        raise UnlearnableError(f"{path} was not written by `unlearnable evaluate --out` (no eval_splits); evaluate "
                               "the model again with --out")
    return data


_COMPARED = (("eval_splits", "evaluation splits", "the same --harmful/--data files and --seed"),
             ("judge", "judges", "the same --judges"),
             ("eval_config", "evaluation settings", "the same version and settings"))


def compare_results(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Results side by side, refused (one-line error) when their evaluation splits, judge or settings differ.

    Returns ``{"names", "metrics": [(metric, [values])], "eval_splits"}``."""
    if len(paths) < 2:
        raise UnlearnableError("--compare needs at least two results files")
    results = [read_results(p) for p in paths]
    ref = results[0]
    for path, res in zip(paths[1:], results[1:]):
        for field, what, fix in _COMPARED:
            if field in ref and field in res and ref[field] != res[field]:
                a, b = ref[field], res[field]
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)) if isinstance(a, dict) and \
                    isinstance(b, dict) else None
                detail = f" (differ in: {', '.join(diff)})" if diff else f" ({a} vs {b})"
                raise UnlearnableError(f"{paths[0]} and {path} used different {what}{detail}, so their numbers are "
                                       f"not comparable; evaluate both with {fix}")
    metrics = [k for k in dict.fromkeys(k for r in results for k in r["summary"])
               if all(isinstance(r["summary"].get(k), (int, float, type(None))) for r in results)]
    return {"names": [str(r.get("model", p)) for r, p in zip(results, paths)],
            "metrics": [(m, [r["summary"].get(m) for r in results]) for m in metrics],
            "eval_splits": ref["eval_splits"]}
