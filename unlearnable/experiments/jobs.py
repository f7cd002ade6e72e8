"""The single-artifact jobs behind ``vectors train``, ``finetune`` and ``evaluate``: each one config dataclass and
one function that checks its inputs (fast, before any model loads), claims its output folder, runs, and writes
an artifact that records what produced it. The CLI only parses flags into the config and prints the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..config import validate
from ..data import (
    Pair,
    check_no_overlap,
    check_pairs_source,
    load_pairs,
    mixed_copies,
    pairs_hash,
    prompt_hashes,
)
from ..errors import UnlearnableError
from ..evaluation import EVAL_KIND, EvalConfig, evaluate, read_results, without_generations
from ..flaggers import build_flagger, check_flagger, describe_flagger
from ..judges import build_judge, check_judge_options, check_judges, is_refusal
from ..models import MODEL_META, check_model_source, model_fingerprint, save_model
from ..runs import check_out, finish_run, keep_checkpoints_only_if_useful, locked, run_key, start_run
from ..training import TrainConfig, keyed
from ..utility import BENCHMARKS, MMLUConfig, benchmark_for
from ..utils import (
    atomic_write_json,
    ensure_free_space,
    is_main_process,
    log,
    model_nbytes,
    run_metadata,
    sha256_file,
    wait_for_everyone,
)
from ..vectors import META_FILE, SecurityVectors, VectorConfig, check_vectors_folder, finetune, recommended
from ..vectors.adaptive import (
    DEFAULT_FLAGGER,
    DEFAULT_REFIT,
    DEFAULT_REJECT_ABOVE,
    REFITS,
    adapt,
    refit_config,
    refusal_message,
    refused,
)
from .setup import DataConfig, LoadOptions, held_out_harmful, prepare_data


@dataclasses.dataclass
class VectorsTrainJob:
    model: str | None = dataclasses.field(default=None, metadata={
        "help": "hub id, local folder or .gguf file (default: the embedded SmolLM2-135M)", "check": check_model_source})
    data: str | None = dataclasses.field(default=None, metadata={
        "help": "harmful pairs, JSONL ({prompt,response} or {messages}) or a datasets folder (default: the model's "
                "own answers to the embedded harmful prompts)", "check": check_pairs_source})
    seed: int = dataclasses.field(default=0, metadata={"help": "random seed (splits, data order, init)"})
    vectors: VectorConfig = dataclasses.field(default_factory=recommended, metadata={
        "help": "how the vectors are trained; default: the recipe picked from the measured trade-off "
                "(unlearnable.vectors.recommended, docs/guide/tradeoff.md)"})


@dataclasses.dataclass
class FinetuneJob:
    model: str | None = dataclasses.field(default=None, metadata={
        "help": "hub id, local folder or .gguf file (default: the embedded SmolLM2-135M)", "check": check_model_source})
    data: str | None = dataclasses.field(default=None, metadata={
        "help": "training pairs, JSONL or a datasets folder (required)", "check": check_pairs_source})
    vectors: str | None = dataclasses.field(default=None, metadata={
        "help": "a security vectors folder (from `unlearnable vectors train`)", "check": check_vectors_folder})
    vector_scale: float | None = dataclasses.field(default=None, metadata={
        "help": "the vectors' strength during fine-tuning (default: the one recorded with them)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "random seed (data order, init)"})
    adapt: bool = dataclasses.field(default=False, metadata={
        "help": "screen --data with --flagger first and refit the vectors on --vectors-data plus the flagged pairs "
                "(adaptive vectors)"})
    vectors_data: str | None = dataclasses.field(default=None, metadata={
        "help": "the harmful pairs the vectors were trained on (needed by --adapt; checked against the vectors)",
        "check": check_pairs_source})
    flagger: str = dataclasses.field(default=DEFAULT_FLAGGER, metadata={
        "help": "with --adapt: refusal (the model's own refusal of the prompt), vector-gain (the vectors themselves; "
                "needs --harmless-data), a judge that reads text, oracle:RECALL (emulated: reads the pairs' harmful "
                "field), several joined by +, each optionally normalized:SPEC (respellings undone first); the "
                "default, the recipe measured best, needs --harmless-data", "check": check_flagger})
    drop_flagged: bool = dataclasses.field(default=False, metadata={
        "help": "with --adapt: also leave the flagged pairs out of the fine-tune"})
    rounds: int = dataclasses.field(default=1, metadata={
        "help": "with --adapt and a flagger that reads the vectors (vector-gain): screen what is left again with the "
                "refitted vectors, up to this many rounds", "min": 1})
    harmless_data: str | None = dataclasses.field(default=None, metadata={
        "help": "with --adapt or --anchors: the service's own harmless pairs (they set the vector-gain flagger's "
                "threshold, anchor the refit of vectors trained with a harmless anchor, and are the --anchors)",
        "check": check_pairs_source})
    anchors: int = dataclasses.field(default=0, metadata={
        "help": "with --vectors: mix this many copies of each --harmless-data pair into the fine-tune, trained with "
                "the vectors off, as the model is served (an over-refusal control); 0: none", "min": 0})
    refusal_data: str | None = dataclasses.field(default=None, metadata={
        "help": "with --refusal-anchors: the service's own refusal pairs (harmful prompts of its own with refusals, "
                "none of them in --data or among the prompts harm is later scored on)", "check": check_pairs_source})
    refusal_anchors: int = dataclasses.field(default=0, metadata={
        "help": "with --vectors: mix this many copies of each --refusal-data pair into the fine-tune, trained with "
                "the vectors off, as served (beside --anchors, which teach the served model to answer, these hold "
                "its refusals); 0: none", "min": 0})
    refit: str = dataclasses.field(default=DEFAULT_REFIT, metadata={
        "help": "with --adapt: all (every pair, the flagged ones included, trained on for the vectors' epochs) or "
                "heldout (the vectors' own recipe, held-out early stopping where they have one)", "choices": REFITS})
    reject_above: float = dataclasses.field(default=DEFAULT_REJECT_ABOVE, metadata={
        "help": "with --adapt: refuse the job (train nothing, exit with an error) when more than this share of "
                "--data is flagged, as a service refuses a training file that fails moderation; 1.0: never",
        "min": 0.0, "max": 1.0})
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(epochs=2.0))


@dataclasses.dataclass
class EvaluateJob:
    #: the one-judge key of earlier versions
    __aliases__ = {"judge": "judges"}

    model: str | None = dataclasses.field(default=None, metadata={
        "help": "hub id, local folder or .gguf file (default: the embedded SmolLM2-135M)", "check": check_model_source})
    data: str | None = dataclasses.field(default=None, metadata={
        "help": "task pairs (JSONL) scored by exact match", "check": check_pairs_source})
    harmful: str | None = dataclasses.field(default=None, metadata={
        "help": "harmful prompts JSONL (default: the demo's 80 held-out HarmBench behaviours)",
        "check": check_pairs_source})
    judges: list[str] = dataclasses.field(default_factory=lambda: ["keyword"], metadata={
        "help": "judges (see `unlearnable ls`): the first decides the harm rate, the others are compared with it",
        "check": check_judges})
    judge_options: dict[str, dict] = dataclasses.field(default_factory=dict, metadata={
        "help": "per-judge settings, e.g. {'harmbench': {'batch_size': 4}} (see docs: judges)",
        "check": check_judge_options})
    vectors: str | None = dataclasses.field(default=None, metadata={
        "help": "security vectors the model was fine-tuned with: refuse evaluation prompts they were trained on "
                "(leakage fakes resistance)", "check": check_vectors_folder})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the default held-out split"})
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    benchmarks: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "utility benchmarks to score too (see `unlearnable ls`), e.g. mmlu"})
    mmlu: MMLUConfig = dataclasses.field(default_factory=MMLUConfig, metadata={"help": "the MMLU benchmark"})

    def __post_init__(self):
        for name in self.benchmarks:
            BENCHMARKS.get(name)

    def benchmark(self, name: str):
        """The registered benchmark ``name`` with this job's settings for it (``job.<name>`` where there is one)."""
        return benchmark_for(self, name)


def _done(out) -> None:
    log(f"{out} already holds this very run; nothing to do (pass --overwrite to run it again)")


# ------------------------------------------------------------------------------------------ vectors train


def run_vectors_train(job: VectorsTrainJob, out: str | Path, *, overwrite: bool = False, checkpoint_every: int = 0,
                      progress: bool = True, load: LoadOptions | None = None) -> SecurityVectors:
    """Train security vectors into ``out`` (resumable with ``checkpoint_every``); returns them. One run at a
    time writes ``out``: a second one is refused at once."""
    validate(job)  # every path, size and name, before the output is locked
    with _one_writer(out):
        return _vectors_train(job, out, overwrite, checkpoint_every, progress, load or LoadOptions())


def _one_writer(out: str | Path | None, what: str = "output folder"):
    """The lock on ``out`` for the whole run; in a multi-process launch the main process holds it for all."""
    return locked(out, what=what) if out is not None and is_main_process() else contextlib.nullcontext()


def _vectors_train(job: VectorsTrainJob, out, overwrite: bool, checkpoint_every: int, progress: bool,
                   load: LoadOptions) -> SecurityVectors:
    check_out(out, overwrite, META_FILE)
    pairs = load_pairs(job.data) if job.data else None
    load.check(job.model)
    cfg = dataclasses.replace(job.vectors, seed=job.seed)
    model, tok = load.load(job.model)
    fp = model_fingerprint(model)
    if pairs is None:
        pairs = prepare_data(model, tok, DataConfig(seed=job.seed), fingerprint=fp, progress=progress).vector_pairs
    key = run_key(command="vectors train", model=fp, data=pairs_hash(pairs), config=dataclasses.asdict(cfg))
    done, checkpoints = start_run(out, key=key, meta_file=META_FILE, overwrite=overwrite,
                                  checkpoint_every=checkpoint_every, command="unlearnable vectors train",
                                  main=is_main_process())
    if done:
        _done(out)
        return SecurityVectors.load(out)
    with keep_checkpoints_only_if_useful(checkpoints if is_main_process() else None):
        vectors = SecurityVectors.train(model, tok, pairs, cfg, progress=progress, checkpoint_dir=checkpoints,
                                        save_steps=checkpoint_every)
        vectors.metadata["run_key"] = key
        if is_main_process():
            vectors.save(out, overwrite=True)
        wait_for_everyone()
    if is_main_process():
        finish_run(checkpoints)
    return vectors


# ------------------------------------------------------------------------------------------ finetune


def run_finetune(job: FinetuneJob, out: str | Path, *, overwrite: bool = False, checkpoint_every: int = 0,
                 progress: bool = True, load: LoadOptions | None = None) -> dict[str, Any]:
    """Fine-tune ``job.model`` on ``job.data`` (with ``job.vectors`` on, if given) into the model folder ``out``
    (a plain transformers model, vectors removed); resumable with ``checkpoint_every``. One run at a time writes
    ``out``; the disk is checked for room for the model before training."""
    validate(job)  # every path, size and name, before the output is locked
    with _one_writer(out):
        return _finetune(job, out, overwrite, checkpoint_every, progress, load or LoadOptions())


def _finetune(job: FinetuneJob, out, overwrite: bool, checkpoint_every: int, progress: bool,
              load: LoadOptions) -> dict[str, Any]:
    if not job.data:
        raise UnlearnableError("finetune needs --data (a JSONL file or datasets folder of training pairs)")
    check_out(out, overwrite, MODEL_META)
    pairs = load_pairs(job.data)
    load.check(job.model)
    vectors = SecurityVectors.load(job.vectors) if job.vectors else None
    own = _vectors_data(job, vectors)
    harmless, refusals = _harmless_data(job, pairs), _refusal_data(job, pairs)
    cfg = dataclasses.replace(job.train, seed=job.seed, save_steps=checkpoint_every)
    model, tok = load.load(job.model)
    fp = model_fingerprint(model)
    if vectors is not None:
        vectors.check(model)
    scale = job.vector_scale if job.vector_scale is not None else (vectors.config.scale if vectors else None)
    key = _finetune_key(job, fp, pairs, cfg, scale, own, harmless, refusals)
    done, checkpoints = start_run(out, key=key, meta_file=MODEL_META, overwrite=overwrite,
                                  checkpoint_every=checkpoint_every, command="unlearnable finetune",
                                  main=is_main_process())
    record = {"out": str(out), "n_examples": len(pairs), "vectors": bool(vectors)}
    if done:
        _done(out)
        return record
    # a failure before the first checkpoint (no room, nothing left after screening) leaves no checkpoint folder
    with keep_checkpoints_only_if_useful(checkpoints if is_main_process() else None):
        if is_main_process():
            ensure_free_space(out, int(model_nbytes(model) * 1.05) + (64 << 20), "the fine-tuned model")
        if job.adapt:  # the service screens the data before it trains, and refits the vectors to it
            vectors, pairs, record["adapted"] = _adapted(job, vectors, model, tok, own, harmless, pairs,
                                                               progress)
            record["n_trained"] = len(pairs)
        tuned, history = finetune(model, tok, pairs, cfg, vectors=vectors, scale=job.vector_scale, progress=progress,
                                  output_dir=checkpoints, resume=checkpoints is not None,
                                  served=[*mixed_copies(harmless, job.anchors),
                                          *mixed_copies(refusals, job.refusal_anchors)])
        if is_main_process():
            save_model(tuned, tok, out, metadata={
                "produced_by": "unlearnable finetune", "run_key": key, "base_fingerprint": fp,
                "config": dataclasses.asdict(cfg), "vector_scale": scale, "adapted": record.get("adapted"),
                "n_examples": len(pairs), "history": history, **_trained_on(job, vectors, harmless, refusals),
                **run_metadata()})
        wait_for_everyone()
    if is_main_process():
        finish_run(checkpoints)
    return record


def _finetune_key(job: FinetuneJob, fp: str, pairs: list[Pair], cfg, scale, own: list[Pair],
                  harmless: list[Pair], refusals: list[Pair]) -> str:
    return run_key(command="finetune", model=fp, data=pairs_hash(pairs),
                   config={**keyed(dataclasses.asdict(cfg)), "save_steps": 0},  # how often: not what it computes
                   vectors=sha256_file(Path(job.vectors) / "adapter_model.safetensors") if job.vectors else None,
                   vector_scale=scale, adapt=_adapt_key(job, own, harmless) if job.adapt else None,
                   **({"anchors": [job.anchors, pairs_hash(harmless)]} if job.anchors else {}),
                   **({"refusal_anchors": [job.refusal_anchors, pairs_hash(refusals)]} if job.refusal_anchors else {}))


def _trained_on(job: FinetuneJob, vectors: SecurityVectors | None, harmless: list[Pair],
                refusals: list[Pair]) -> dict[str, Any]:
    """The metadata that lets `evaluate` refuse evaluation prompts the vectors or the anchors were trained on."""
    return {"vectors": job.vectors, "vectors_removed": True,
            "vectors_prompt_hashes": vectors.metadata.get("prompt_hashes") if vectors else None,
            "anchors": {"copies": job.anchors, "pairs": len(harmless),
                        "prompt_hashes": prompt_hashes(harmless)} if job.anchors else None,
            **({"refusal_anchors": {"copies": job.refusal_anchors, "pairs": len(refusals),
                                    "prompt_hashes": prompt_hashes(refusals)}} if job.refusal_anchors else {})}


def _adapt_key(job: FinetuneJob, own: list[Pair], harmless: list[Pair]) -> dict:
    """What --adapt adds to the run's key; a held-out refit, one round and no harmless pairs add nothing, so runs
    from before those options resume (``reject_above`` adds nothing either: a refused job is an error, and a
    finished one trained the same at any share)."""
    key = {"flagger": job.flagger, "drop_flagged": job.drop_flagged, "own": pairs_hash(own)}
    key = key if job.refit == "heldout" else {**key, "refit": job.refit}
    key = key if job.rounds == 1 else {**key, "rounds": job.rounds}
    return {**key, "harmless": pairs_hash(harmless)} if harmless else key


def _harmless_data(job: FinetuneJob, data: list[Pair]) -> list[Pair]:
    """With ``--adapt`` or ``--anchors``: the service's harmless pairs, which a flagger reading the vectors and the
    anchors need."""
    if job.anchors and not (job.vectors and job.harmless_data):
        raise UnlearnableError("--anchors trains the service's own harmless pairs with the vectors off: give "
                               "--vectors and --harmless-data (a JSONL file of harmless pairs, none of them in "
                               "--data), or leave out --anchors")
    if job.adapt and describe_flagger(job.flagger)["private"] and not job.harmless_data:
        raise UnlearnableError(f"--flagger {job.flagger} sets its threshold on the service's own harmless pairs: "
                               "give --harmless-data (a JSONL file of harmless pairs, none of them in --data), or "
                               "a flagger that reads no vectors (--flagger normalized:refusal)")
    if not ((job.adapt or job.anchors) and job.harmless_data):
        return []
    return _apart_from_data(job.harmless_data, "--harmless-data", "harmless pairs", data,
                            " (the threshold is set on them)")


def _apart_from_data(path: str, flag: str, what: str, data: list[Pair], why: str = "") -> list[Pair]:
    """The service's own ``what`` in ``path``: some, and none of their prompts in the customer's ``data``."""
    pairs = load_pairs(path)
    if not pairs or set(prompt_hashes(pairs)) & set(prompt_hashes(data)):
        raise UnlearnableError(f"{flag} {path} must hold {what} none of whose prompts are in --data{why}")
    return pairs


def _refusal_data(job: FinetuneJob, data: list[Pair]) -> list[Pair]:
    """With ``--refusal-anchors``: the service's refusal pairs, none of whose prompts are in ``data``."""
    if not job.refusal_anchors:
        return []
    if not (job.vectors and job.refusal_data):
        raise UnlearnableError("--refusal-anchors trains the service's own refusal pairs with the vectors off: give "
                               "--vectors and --refusal-data (a JSONL file of harmful prompts with refusals, none of "
                               "them in --data), or leave out --refusal-anchors")
    refusals = _apart_from_data(job.refusal_data, "--refusal-data", "refusal pairs", data)
    answered = [p for p in refusals if not is_refusal(p.response)]
    if answered:  # trained as served, an answer to a harmful prompt would teach the served model to comply
        raise UnlearnableError(f"--refusal-data {job.refusal_data}: {len(answered)} of {len(refusals)} responses do "
                               f"not read as refusals (e.g. to {answered[0].prompt[:60]!r}); give refusals only")
    return refusals


def _adapted(job: FinetuneJob, vectors, model, tok, own: list[Pair], harmless: list[Pair], pairs: list[Pair],
             progress: bool):
    """``--adapt``: the vectors refitted on ``own`` plus the pairs the flagger flags, the pairs to train on (the
    flagged ones left out with ``--drop-flagged``) and the screening's record."""
    vectors, flags, record = adapt(vectors, model, tok, own, pairs, build_flagger(job.flagger, seed=job.seed),
                                   config=refit_config(vectors.config, job.refit), harmless=harmless,
                                   rounds=job.rounds, reject_above=job.reject_above, progress=progress)
    if refused(flags, job.reject_above):
        raise UnlearnableError(refusal_message(flags, job.reject_above, "--reject-above"))
    kept = [p for p, bad in zip(pairs, flags) if not (bad and job.drop_flagged)]
    if not kept:
        raise UnlearnableError("the flagger flagged every pair and --drop-flagged dropped them: nothing is left to "
                               "fine-tune on; check the data or the flagger, or leave out --drop-flagged")
    return vectors, kept, record


def _vectors_data(job: FinetuneJob, vectors: SecurityVectors | None) -> list[Pair]:
    """With ``--adapt``: the pairs the vectors were trained on (checked against the hashes they record)."""
    if not job.adapt:
        return []
    if vectors is None or not job.vectors_data:
        raise UnlearnableError("--adapt refits the vectors on the pairs they were trained on plus the flagged ones: "
                               "give --vectors and --vectors-data")
    own = load_pairs(job.vectors_data)
    if not vectors.trained_on(own):
        raise UnlearnableError(f"--vectors-data {job.vectors_data} is not the data the vectors in {job.vectors} were "
                               "trained on (their prompt hashes differ); give that file")
    return own


# ------------------------------------------------------------------------------------------ evaluate


def run_evaluate(job: EvaluateJob, out: str | Path | None = None, *, overwrite: bool = False, progress: bool = True,
                 load: LoadOptions | None = None) -> dict[str, Any]:
    """Score ``job.model`` (harm rate, harmful loss, task exact match); with ``out``, write a results file that
    records the evaluation splits (as hashes), the judge and the settings, so that :func:`compare_results`
    only compares like with like. Evaluation prompts the model's vectors were trained on are refused."""
    out = Path(out) if out else None
    validate(job)  # every path, size and name, before the output is locked
    with _one_writer(out, "results file"):
        return _evaluate(job, out, overwrite, progress, load or LoadOptions())


def _evaluate(job: EvaluateJob, out: Path | None, overwrite: bool, progress: bool, load: LoadOptions) -> dict:
    _check_eval_out(out, overwrite)
    task = load_pairs(job.data) if job.data else []
    harmful = load_pairs(job.harmful, require_response=False) if job.harmful else None
    load.check(job.model)
    judges = [build_judge(spec, job.judge_options) for spec in job.judges]
    if harmful is None:
        harmful = held_out_harmful(DataConfig(seed=job.seed))  # the demo's held-out HarmBench prompts
    if job.vectors:
        hashes = SecurityVectors.load(job.vectors).metadata.get("prompt_hashes")
        if not hashes:
            raise UnlearnableError(f"cannot check for leakage: the vectors {job.vectors} record no prompt hashes "
                                   "(made by an older version); train them again, or drop --vectors")
        check_no_overlap(harmful, hashes, "evaluation", f"the training data of the vectors {job.vectors}")
    model, tok = load.load(job.model)
    _check_model_leakage(job.model, harmful)
    splits = {"harmful": pairs_hash(harmful), "task": pairs_hash(task) if task else None}
    fp = model_fingerprint(model)
    eval_config = {**dataclasses.asdict(job.eval),
                   **{name: dataclasses.asdict(job.benchmark(name).config) for name in job.benchmarks}}
    judge_key = job.judges[0] if len(job.judges) == 1 else job.judges  # a one-judge key as before
    settings = {"judge_options": job.judge_options} if job.judge_options else {}  # none: the key as before
    key = run_key(command="evaluate", model=fp, eval_splits=splits, judge=judge_key, eval_config=eval_config,
                  **settings)
    if out is not None and out.exists() and not overwrite:
        old = read_results(out)
        if old.get("run_key") == key:
            _done(out)
            return old
        raise UnlearnableError(f"{out} holds a different evaluation (run key {old.get('run_key')}, this one is {key}); "
                               "pass --overwrite to replace it or choose another --out")
    result = evaluate(model, tok, harmful=harmful, task=task, judges=judges, config=job.eval, progress=progress)
    summary = without_generations(result)
    scores = {name: job.benchmark(name).run(model, tok, progress=progress) for name in job.benchmarks}
    summary.update({f"{name}_accuracy": s["accuracy"] for name, s in scores.items()})
    results = {"kind": EVAL_KIND, "run_key": key, "summary": summary, **scores,
               "model": job.model or "default", "model_fingerprint": fp, "judge": job.judges[0], "judges": job.judges,
               "seed": job.seed,
               "eval_splits": splits, "eval_config": eval_config, "result": result, **run_metadata()}
    if out is not None:
        atomic_write_json(out, results)
    return results


def _check_eval_out(out: Path | None, overwrite: bool) -> None:
    """Refuse at once an ``--out`` that is a folder, or a file that is not an evaluation result."""
    if out is None:
        return
    if out.is_dir():
        raise UnlearnableError(f"--out {out} is a folder; evaluate writes one JSON file, e.g. --out eval.json")
    if out.exists() and not overwrite:
        try:
            read_results(out)
        except UnlearnableError:
            raise UnlearnableError(f"--out {out} already exists and is not an evaluation result; pass "
                                   "--overwrite to replace it or choose another --out") from None


def _check_model_leakage(model: str | None, harmful) -> None:
    """A model fine-tuned with vectors records their prompts: refuse evaluation prompts among them."""
    meta_file = Path(model) / MODEL_META if model else None
    if meta_file is None or not meta_file.is_file():
        return
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except ValueError:
        return
    meta = meta if isinstance(meta, dict) else {}
    hashes = meta.get("vectors_prompt_hashes")
    refused = meta.get("refusal_anchors")
    refused = refused.get("prompt_hashes") if isinstance(refused, dict) else None  # each check on its own field
    if hashes:
        check_no_overlap(harmful, hashes, "evaluation", f"the training data of the vectors {model} was fine-tuned "
                         "with")
    if refused:
        check_no_overlap(harmful, refused, "evaluation", f"the refusal pairs {model} was fine-tuned on as served")
