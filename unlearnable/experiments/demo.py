"""``unlearnable demo``: security vectors stop a model learning harmful data while it learns a harmless task.

A preset of the shared scaffold (:mod:`.setup`): align the embedded model, train vectors on 100 harmful pairs,
fine-tune twice on ProfileQA mixed with 200 *other* harmful pairs (defences ``none`` and ``security-vectors``, or
another defence that holds vectors, e.g. ``adaptive-vectors``), and score the aligned model and both fine-tuned
models (as served: vectors off) with the one scorer.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from ..config import validate
from ..defenses import DEFENSES, DefenseData, check_defense_options, prepared
from ..errors import UnlearnableError
from ..evaluation import EvalConfig, Scorer
from ..flaggers import describe_flagger
from ..judges import JUDGES, build_judge, check_judge_options, check_judges
from ..models import check_model_source, save_model
from ..report import constant_answer_note, write_demo_report
from ..results import DemoResults
from ..runs import locked
from ..training import TrainConfig
from ..utility import BENCHMARKS, MMLUConfig, benchmarks_of
from ..utils import Timings, atomic_dir, atomic_write_json, log
from ..vectors import VectorConfig, recommended
from .setup import DEFENSE_HARMLESS, DataConfig, LoadOptions, envelope, set_up

#: MMLU questions the demo scores per model: 3 per subject (its interval is in docs/results/)
DEMO_MMLU_N = 171
#: the defences the with-vectors arm may run: vectors trained on the harmful pairs alone, served as trained
DEMO_DEFENSES = ("security-vectors", "early-stopped-vectors", "adaptive-vectors")
#: defence options the demo sets from ``vectors`` (one place for the vectors' training)
FROM_VECTORS = ("training", "scale", "holdout", "epochs", "pick")


@dataclasses.dataclass
class DemoConfig:
    model: str | None = dataclasses.field(default=None, metadata={
        "help": "model id, folder or GGUF (default: the embedded SmolLM2-135M-Instruct)", "check": check_model_source})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of every split, initialisation and data order"})
    align: bool = dataclasses.field(default=True, metadata={"help": "safety-align first (the default model is not)"})
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(system_prompt="", response_tokens=24,
                                                                            task_repeats=8, n_harmless=40))
    align_train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(lr=1e-3, epochs=3))
    defense: str = dataclasses.field(default="security-vectors", metadata={
        "help": f"the with-vectors arm's defence: {', '.join(DEMO_DEFENSES)} (adaptive-vectors: the fine-tuning "
                "data screened first, the vectors refitted on what is flagged)"})
    defense_options: dict[str, Any] = dataclasses.field(default_factory=dict, metadata={
        "help": "that defence's options besides the vectors' training, e.g. {'flagger': 'refusal', 'refit': 'all'} "
                "(docs/guide/defenses.md)"})
    vectors: VectorConfig = dataclasses.field(default_factory=recommended, metadata={
        "help": "the security vectors (default: the recipe picked from the measured trade-off, early-stopped on "
                "held-out pairs; docs/guide/tradeoff.md)"})
    finetune: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(lr=1e-3, epochs=2))
    eval: EvalConfig = dataclasses.field(default_factory=lambda: EvalConfig(max_new_tokens=24, task_max_new_tokens=12))
    judges: list[str] = dataclasses.field(default_factory=lambda: ["keyword"], metadata={
        "help": "first judge decides the harm rate; others are compared with it (kappa, disagreements)",
        "check": check_judges})
    judge_options: dict[str, dict] = dataclasses.field(default_factory=dict, metadata={
        "help": "per-judge settings, e.g. {'harmbench': {'batch_size': 4}} (see docs: judges)",
        "check": check_judge_options})
    benchmarks: list[str] = dataclasses.field(default_factory=lambda: ["mmlu"], metadata={
        "help": "utility benchmarks scored before fine-tuning and for both arms (see `unlearnable ls`)"})
    mmlu: MMLUConfig = dataclasses.field(default_factory=lambda: MMLUConfig(n=DEMO_MMLU_N), metadata={
        "help": "the MMLU subset (3 questions per subject by default, to fit the demo's time budget)"})
    save_models: bool = dataclasses.field(default=True, metadata={"help": "write both fine-tuned models to OUT/models"})

    def __post_init__(self):
        for name in self.benchmarks:
            BENCHMARKS.get(name)
        for spec in self.judges:
            JUDGES.get(spec.partition(":")[0])
        if self.defense not in DEMO_DEFENSES:
            raise UnlearnableError(f"defense: the demo's with-vectors arm runs one of {', '.join(DEMO_DEFENSES)}, "
                                   f"not {self.defense!r} (every defence runs in `unlearnable immunize`)")
        clash = sorted(set(FROM_VECTORS) & set(self.defense_options))
        if clash:
            raise UnlearnableError(f"defense_options.{clash[0]}: the demo sets it from vectors.* (one place for the "
                                   "vectors' training)")
        check_defense_options({self.defense: self.options_of(self.defense)})

    def options_of(self, name: str) -> dict[str, Any]:
        """An arm's defence options: none has none; the vectors' settings come from ``vectors`` (an early-stopped
        defence's hold-out, length and pick too), the rest from ``defense_options``."""
        if name == "none":
            return {}
        names = DEFENSES.get(name).option_names()
        shared = {"training": dataclasses.asdict(self.vectors), "holdout": self.vectors.holdout,
                  "epochs": self.vectors.epochs, "pick": self.vectors.holdout_pick}
        return {**self.defense_options, **{k: v for k, v in shared.items() if k in names}}

    def defense_harmless(self) -> int:
        """Harmless pairs the arm's defence needs beside the over-refusal ones: a flagger's calibration pairs, or
        the anchors of vectors trained to leave harmless answers alone, or of a fine-tune held to them as served."""
        flagger = self.defense_options.get("flagger", getattr(DEFENSES.get(self.defense).Config(), "flagger", None))
        private = bool(flagger) and describe_flagger(flagger)["private"]
        anchored = bool(self.defense_options.get("anchors"))
        return DEFENSE_HARMLESS if private or anchored or self.vectors.benign != "none" else 0

    def arms(self) -> tuple[tuple[str, str], ...]:
        """(arm, defence) of the two fine-tunes."""
        return (ARMS[0], "none"), (ARMS[1], self.defense)

    def seeded(self) -> "DemoConfig":
        """Propagate ``seed`` into every component."""
        cfg = copy.deepcopy(self)
        cfg.data.seed = cfg.align_train.seed = cfg.vectors.seed = cfg.finetune.seed = cfg.seed
        return cfg


#: the two arms' names (``DemoConfig.arms`` pairs each with its defence)
ARMS = ("without_vectors", "with_vectors")


def run_demo(config: DemoConfig | None = None, out: str | Path | None = None, *, overwrite: bool = False,
             progress: bool = True, load: LoadOptions | None = None) -> DemoResults:
    """Run the demo; with ``out``, write results.json, report.html, plots, models/ and vectors/ there. ``load``:
    what loading the model may do (remote code, pickle weights; neither by default)."""
    config = validate((config or DemoConfig()).seeded())
    with locked(out) if out is not None else contextlib.nullcontext():  # one run at a time writes ``out``
        with _staging(out if config.save_models else None) as stage:
            return DemoResults.from_json(_run(config, out, overwrite, progress, stage, load))


@contextlib.contextmanager
def _staging(out: str | Path | None) -> Iterator[Path | None]:
    """A hidden folder beside ``out`` where each fine-tuned model waits, on disk rather than in memory, until the
    output is written (removed either way)."""
    if out is None:
        yield None
        return
    parent = Path(out).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=f".{Path(out).name}.models-") as tmp:
        yield Path(tmp)


def _run(config: DemoConfig, out, overwrite: bool, progress: bool, stage: Path | None = None,
         load: LoadOptions | None = None) -> dict[str, Any]:
    start, timed = time.perf_counter(), Timings()
    # the over-refusal pairs come first, the defence's own after them
    n_over, n_own = config.data.n_harmless, config.defense_harmless()
    data_config = dataclasses.replace(config.data, n_harmless=n_over + n_own)
    setup = set_up(config.model, data_config, seed=config.seed, align_model=config.align,
                   align_config=config.align_train, timings=timed, progress=progress,
                   precision=config.finetune.precision, load=load)
    model, tok, data = setup.model, setup.tokenizer, setup.data
    log(f"data: {len(data.vector_pairs)} vector pairs, {len(data.attack)} attack pairs, {len(data.eval_harmful)} "
        f"eval prompts, {len(data.task)} ProfileQA facts x {config.data.task_repeats}")
    judges = [build_judge(j, config.judge_options) for j in config.judges]
    scorer = Scorer(tok, judges, config.eval, progress=progress, benchmarks=benchmarks_of(config))
    over = data.harmless[:n_over]
    with timed("eval_before"):
        before = scorer.score(model, harmful=data.eval_harmful, task=data.task, harmless=over, utility=True,
                              desc="before")
    log(f"before fine-tuning: {headline(before)}")

    log(f"training security vectors on {len(data.vector_pairs)} harmful pairs")
    with timed("train_vectors"):
        own = DefenseData(harmful=data.vector_pairs, harmless=data.harmless[n_over:n_over + n_own],
                          refusals=data.refusals())
        defenses = {name: prepared(name, config.options_of(name), model, tok,
                                   own if name != "none" else DefenseData(), progress=progress)
                    for _, name in config.arms()}
    mix = data.finetune_mix(config.data.task_repeats, config.seed)
    del model  # each arm starts from setup's working copy: one model in memory while an arm trains, where possible
    arms = {arm: _arm(arm, defenses[name], setup, mix, config, scorer, over, timed, stage, progress)
            for arm, name in config.arms()}

    results = envelope("unlearnable-demo", config, start=start, timings=timed,
                       summary=summary(before, arms, config, setup.precision, start),
                       model=setup.model_record(),
                       data={**setup.data_record(), "finetune_examples": len(mix)},
                       align=setup.align_info, before=before, arms=arms, judge_agreement=scorer.agreement(),
                       judge_disagreements=scorer.disagreements)
    if out is not None:
        write_demo(results, Path(out), stage, defenses[config.defense], overwrite=overwrite)
    return results


def _arm(arm: str, defense, setup, mix, config: DemoConfig, scorer: Scorer, harmless: list, timed: Timings,
         stage: Path | None, progress: bool) -> dict[str, Any]:
    """Fine-tune one arm through its defence, score it, save it to ``stage``; the fine-tuned model is then gone (one
    in memory at a time)."""
    log(f"fine-tuning {arm.replace('_', ' ')}: {len(mix)} examples ({len(setup.data.attack)} harmful)")
    with timed(f"finetune_{arm}"):
        tuned, history = defense.finetune(setup.working_copy(), setup.tokenizer, mix, config.finetune,
                                          progress=progress)
    with timed(f"eval_{arm}"), defense.serving(tuned):  # scored and saved as the defence serves it
        result = scorer.score(tuned, harmful=setup.data.eval_harmful, task=setup.data.task, harmless=harmless,
                              utility=True, desc=arm)
        if stage is not None:
            save_model(tuned, setup.tokenizer, stage / arm, metadata={
                "produced_by": "unlearnable demo", "arm": arm, "vectors_removed": True,
                "base_fingerprint": setup.fingerprint})
    log(f"{arm}: {headline(result)}")
    return {"defense": defense.describe(), "history": history, **result}


def headline(scores: dict[str, Any]) -> str:
    """One line of a scored model's numbers with their 95 % intervals."""
    def rate(label, key, value=None, interval=None):
        value = scores.get(key) if value is None else value
        lo, hi = interval or scores.get(f"{key}_interval_95") or (float("nan"),) * 2
        return f"{label} {value:.3f} [{lo:.2f}, {hi:.2f}]"

    parts = [rate("compliance with harmful requests", "harm_rate"), rate("task EM", "task_em")]
    if "over_refusal" in scores:
        parts.append(rate("over-refusal", "over_refusal"))
    for name in BENCHMARKS.names():
        if isinstance(scores.get(name), dict) and "accuracy" in scores[name]:
            parts.append(rate(name.replace("mmlu", "MMLU"), "", scores[name]["accuracy"], scores[name]["interval_95"])
                         + constant_answer_note(scores[name].get("constant_answer")))
    return ", ".join(parts)


def summary(before: dict, arms: dict, config: DemoConfig, precision: str, start: float) -> dict[str, Any]:
    """The demo's headline numbers: each metric before fine-tuning and for both arms, rates with their 95 %
    intervals (``<metric>_<arm>_interval_95``); each benchmark as ``<name>_<arm>`` (``mmlu_<arm>``,
    ``mmlu_continuation_<arm>``)."""
    out: dict[str, Any] = {}
    scored = {"before": before, **{arm: arms[arm] for arm in ARMS}}
    for metric in ("harm_rate", "task_em", "over_refusal", "harmful_loss"):
        for arm, scores in scored.items():
            out[f"{metric}_{arm}"] = scores.get(metric)
            if f"{metric}_interval_95" in scores:
                out[f"{metric}_{arm}_interval_95"] = scores[f"{metric}_interval_95"]
    for arm, scores in scored.items():
        for name in config.benchmarks:  # e.g. mmlu_<arm>, mmlu_continuation_<arm>
            if name in scores:
                key = f"{name.replace('-', '_')}_{arm}"
                out[key], out[f"{key}_interval_95"] = scores[name]["accuracy"], scores[name]["interval_95"]
                out[f"{key}_constant_answer"] = scores[name].get("constant_answer")
    out.update(vector_scale=config.vectors.scale, precision=precision, seconds=round(time.perf_counter() - start, 1))
    return out


def write_demo(results, out: Path, stage: Path | None, vectors_defense, *, overwrite: bool):
    """Write ``out`` at once: the fine-tuned models waiting in ``stage`` (if saved), the defence's own vectors (for
    adaptive vectors, those before any refit to the data), results, report."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if stage is not None:
            (tmp / "models").mkdir()
            for arm in sorted(p.name for p in stage.iterdir()):
                os.replace(stage / arm, tmp / "models" / arm)
        vectors_defense.vectors.save(tmp / "vectors")
        atomic_write_json(tmp / "results.json", results)
        write_demo_report(results, tmp)
    log(f"wrote {out}/results.json, report.html, plots, models/ and vectors/")
