"""The scaffold every experiment shares: load the model, build disjoint data splits, align, and one results
envelope.

``unlearnable demo``, ``immunize`` and ``tradeoff`` all start with :func:`set_up` (load -> system prompt ->
fingerprint -> data -> alignment) and end with :func:`envelope` (kind, config, model, data, timings, versions).
Expensive intermediate results (the base model's answers, the aligned model) are cached under
``$UNLEARNABLE_CACHE`` keyed by the model fingerprint and the settings that made them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import re
import time
from typing import Any, Callable, Sequence

from ..data import (
    SYSTEM_ATTR,
    Pair,
    check_disjoint,
    check_harmful_categories,
    check_pairs_source,
    dedupe,
    encoding_key,
    harmful_prompts,
    harmless_prompts,
    load_pairs,
    normalize,
    pairs_hash,
    profileqa,
    refusal_pairs,
    set_system_prompt,
    split,
)
from ..defenses import changed_defaults, revisions
from ..errors import UnlearnableError
from ..generation import generate
from ..judges import is_degenerate, is_refusal
from ..models import MODEL_META, check_model, load_model, model_fingerprint, save_model
from ..results import SCHEMA_VERSION
from ..runs import locked
from ..training import TrainConfig, finetune, keyed
from ..utils import (
    Timings,
    atomic_write_json,
    cache_dir,
    git_hash,
    keep_large_blocks_out_of_the_heap,
    launch_device,
    log,
    resolve_precision,
    resources,
    run_metadata,
    set_seed,
    sha256_json,
)


@dataclasses.dataclass
class DataConfig:
    """Sizes of the disjoint splits built from the embedded harmful prompts, and of the harmless task."""

    seed: int = dataclasses.field(default=0, metadata={"help": "seed for every split and generated profile"})
    n_eval: int = dataclasses.field(default=80, metadata={"help": "held-out harmful prompts for the harm rate"})
    eval_categories: list[str] = dataclasses.field(default_factory=lambda: ["harmbench"], metadata={
        "help": "categories the held-out harmful prompts are drawn from: HarmBench's standard behaviours by default "
                "(harmful to comply with by construction); [] = any in-domain category",
        "check": check_harmful_categories})
    n_eval_loss: int = dataclasses.field(default=40, metadata={"help": "eval prompts whose base-model answers "
                                                                        "score the held-out harmful loss"})
    n_align: int = dataclasses.field(default=100, metadata={"help": "harmful prompts paired with refusals to align"})
    n_vectors: int = dataclasses.field(default=100, metadata={"help": "harmful pairs the defence trains on"})
    n_attack: int = dataclasses.field(default=200, metadata={"help": "harmful pairs in the user's / attacker's data"})
    vector_pool: int = dataclasses.field(default=200, metadata={"help": "prompts reserved to find n_vectors "
                                                                         "compliant answers"})
    attack_pool: int = dataclasses.field(default=400, metadata={"help": "prompts reserved to find n_attack "
                                                                         "compliant answers"})
    attack_answers: int = dataclasses.field(default=1, metadata={
        "min": 1, "help": "answers per attack prompt: beyond the greedy one, seeded sampled answers add distinct "
                          "compliant pairs where the prompts run out (e.g. 1,000 attack pairs from a 400-prompt pool)"})
    response_tokens: int = dataclasses.field(default=32, metadata={"help": "tokens of the base model's harmful "
                                                                            "answers kept as harmful responses"})
    harmful_pairs: str | None = dataclasses.field(default=None, metadata={
        "help": "your own harmful (prompt, response) pairs (JSONL of prompt/response or messages, or a datasets "
                "folder) for the vectors, the attacker and, by category, the cross-domain split; None: the model's "
                "own compliant answers to the embedded prompts (an aligned model refuses them: bring pairs)",
        "check": check_pairs_source})
    system_prompt: str | None = dataclasses.field(default=None, metadata={
        "help": "system message for every conversation; None keeps the chat template's default"})
    n_harmless_align: int = dataclasses.field(default=60, metadata={"help": "harmless prompts (own answers) mixed "
                                                                             "into alignment"})
    harmless_repeats: int = dataclasses.field(default=2, metadata={
        "help": "copies of each harmless answer in the alignment data (many distinct prompts keep over-refusal "
                "low; docs/results/)"})
    n_harmless: int = dataclasses.field(default=0, metadata={"help": "harmless prompts with the base model's own "
                                                                      "answers reserved for defences / stability"})
    cross_domain: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "harmful categories (Do-Not-Answer risk areas or 'harmbench') held out of every in-domain split, "
                "for the generalization condition", "check": check_harmful_categories})
    n_cross_eval: int = 40
    n_cross_attack: int = 100
    cross_attack_pool: int = 180
    n_profiles: int = dataclasses.field(default=8, metadata={"help": "ProfileQA people (5 facts each)"})
    task_repeats: int = dataclasses.field(default=8, metadata={"help": "copies of each ProfileQA fact in the "
                                                                        "fine-tuning data"})


@dataclasses.dataclass
class PreparedData:
    """Every split the pipeline uses, disjoint by construction and checked."""

    eval_harmful: list[Pair]          # held-out harmful prompts (response = base answer when compliant, else "")
    align: list[Pair]                 # refusal + harmless pairs used to align the base model
    vector_pairs: list[Pair]          # harmful pairs the defence may train on (the vectors' training data)
    attack: list[Pair]                # harmful pairs in the fine-tuning data (the user's or the attacker's)
    harmless: list[Pair]              # harmless prompts with the base model's answers (reserved for defences)
    task: list[Pair]                  # ProfileQA facts (train copies and evaluation questions)
    cross_eval: list[Pair] = dataclasses.field(default_factory=list)    # held-out-domain harmful prompts
    cross_attack: list[Pair] = dataclasses.field(default_factory=list)  # held-out-domain harmful pairs
    hashes: dict[str, str] = dataclasses.field(default_factory=dict)
    sources: dict[str, str] = dataclasses.field(default_factory=dict)  # where a split's responses came from

    def refusals(self) -> list[Pair]:
        """The alignment data's refusal pairs: harmful prompts of the provider's own with their refusals."""
        return [p for p in self.align if is_refusal(p.response)]

    def finetune_mix(self, repeats: int, seed: int, harmful: Sequence[Pair] | None = None) -> list[Pair]:
        """The user's data: the harmful pairs (``harmful``, default the attack split as it is) among the task's
        pairs repeated ``repeats`` times, shuffled (seeded)."""
        mix = list(self.attack if harmful is None else harmful) + [p for p in self.task for _ in range(repeats)]
        random.Random(seed).shuffle(mix)
        return mix


#: how sampled answers are drawn (in their cache keys): 2 = a generator per prompt (``generation.seeded_sampling``);
#: samples drawn the earlier way (one seed per batch) are not reused
SAMPLING = 2


def sweep_config(config: Any) -> dict[str, Any]:
    """A sweep's config as its folder is keyed by (:func:`keyed`), with how sampled answers are drawn where its
    data holds some (``attack_answers`` > 1): a folder made with other samples is another sweep; and the defaults
    that changed since runs were keyed, of the options its defences leave unset (``defense_recipes()``): a folder
    made under the old defaults is another sweep too, as is one made by an earlier revision of a defence."""
    data = getattr(config, "data", None) or getattr(getattr(config, "base", None), "data", None)
    sampled = data is not None and data.attack_answers > 1
    recipes = config.defense_recipes() if hasattr(config, "defense_recipes") else []
    changed, revised = changed_defaults(recipes), revisions(recipes)
    return {**keyed(dataclasses.asdict(config)), **({"answer_sampling": SAMPLING} if sampled else {}),
            **({"changed_defaults": changed} if changed else {}), **({"revisions": revised} if revised else {})}


class ResponseCache:
    """The base model's greedy answers to prompts, cached per (model fingerprint, token budget)."""

    def __init__(self, model, tokenizer, max_new_tokens: int, fingerprint: str, progress: bool = True):
        self.model, self.tok, self.max_new_tokens, self.progress = model, tokenizer, max_new_tokens, progress
        enc = encoding_key(tokenizer)
        fmt = sha256_json([getattr(tokenizer, SYSTEM_ATTR, None), getattr(tokenizer, "chat_template", None)]
                          + ([enc] if enc else []))[:8]
        self.path = cache_dir() / "responses" / f"{fingerprint}-{fmt}-{max_new_tokens}.json"
        self.data: dict[str, str] = self._read()

    def answers(self, prompts: Sequence[str], desc: str = "base answers", sample: int = 0) -> list[str]:
        """The greedy answer to each prompt, or with ``sample`` k >= 1 its k-th seeded sampled answer."""
        keys = [p if not sample else f"#sample{sample}.{SAMPLING}\t{p}" for p in prompts]
        todo = [(k, p) for k, p in dict.fromkeys(zip(keys, prompts)) if k not in self.data]
        if todo:
            gens = generate(self.model, self.tok, [p for _, p in todo], max_new_tokens=self.max_new_tokens,
                            desc=desc, progress=self.progress, sample_seed=sample or None)
            with locked(self.path, wait=True, what="answer cache"):  # merge with what another process added
                self.data = {**self._read(), **self.data, **dict(zip([k for k, _ in todo], gens))}
                atomic_write_json(self.path, self.data)
        return [self.data[k] for k in keys]

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def compliant(self, candidates: Sequence[Pair], n: int, what: str, answers: int = 1) -> list[Pair]:
        """The first ``n`` candidates (in order) that the model answers rather than refuses; where they run out and
        ``answers`` > 1, seeded sampled answers to the same prompts (the k-th sample of each prompt in turn) add
        distinct compliant pairs, so a pool can hold more pairs than it has prompts.

        Generates in chunks sized from the compliance rate seen so far, so few answers are wasted."""
        out = self._compliant_greedy(candidates, n, what, strict=answers <= 1)
        if len(out) == n:
            return out
        seen = {(normalize(p.prompt), normalize(p.response)) for p in out}
        for k in range(1, answers):
            for pair, answer in zip(candidates, self.answers([p.prompt for p in candidates],
                                                             desc=f"sampled answers {k} ({what})", sample=k)):
                key = (normalize(pair.prompt), normalize(answer))
                if key not in seen and not is_refusal(answer) and not is_degenerate(answer):
                    seen.add(key)
                    out.append(dataclasses.replace(pair, response=answer, harmful=True))
                    if len(out) == n:
                        return out
        raise UnlearnableError(f"only {len(out)} distinct compliant {what} pairs from {len(candidates)} prompts with "
                               f"{answers} answers each, {n} needed: raise data.{what}_answers or the pool size")

    def _compliant_greedy(self, candidates: Sequence[Pair], n: int, what: str, strict: bool = False) -> list[Pair]:
        out: list[Pair] = []
        start, seen = 0, 0
        while start < len(candidates):
            rate = max(0.3, len(out) / seen) if seen else 0.9
            chunk = max(8, int((n - len(out)) / rate * 1.1) + 1)
            part = candidates[start:start + chunk]
            start += len(part)
            seen += len(part)
            for pair, answer in zip(part, self.answers([p.prompt for p in part], desc=f"base answers ({what})")):
                if not is_refusal(answer) and not is_degenerate(answer):
                    out.append(dataclasses.replace(pair, response=answer, harmful=True))
                    if len(out) == n:
                        return out
        if not strict:
            return out
        raise UnlearnableError(f"only {len(out)} of {len(candidates)} {what} prompts got a compliant answer from the "
                               f"model, {n} needed; an aligned model refuses them: give harmful pairs of your own "
                               f"(data.harmful_pairs, a JSONL of prompt/response), or raise the pool size or lower "
                               f"n_{what}")


def _in_domain_pools(in_domain: list[Pair], config: DataConfig) -> dict[str, list[Pair]]:
    """Held-out prompts from ``eval_categories``; alignment, vector and attack pools from everything else."""
    cats = set(config.eval_categories)
    unknown = cats - {p.category for p in in_domain}
    if unknown:
        raise UnlearnableError(f"eval_categories {sorted(unknown)} have no in-domain prompts (held out as "
                               "cross-domain, or unknown); pick other categories")
    evaluable = [p for p in in_domain if not cats or p.category in cats]
    if len(evaluable) < config.n_eval:
        raise UnlearnableError(f"n_eval={config.n_eval} but the eval categories hold only {len(evaluable)} prompts; "
                               "lower n_eval or add categories")
    held = split(evaluable, {"eval": config.n_eval}, config.seed)["eval"]
    taken = {p.prompt for p in held}
    pools = split([p for p in in_domain if p.prompt not in taken],
                  {"align": config.n_align, "vectors": config.vector_pool, "attack": config.attack_pool}, config.seed)
    return {"eval": held, **pools}


def held_out_harmful(config: DataConfig) -> list[Pair]:
    """The held-out harmful prompts ``config`` evaluates on (``eval_categories``, HarmBench by default): for the
    same data settings, the same prompts the demo and immunize score."""
    in_domain = [p for p in harmful_prompts() if p.category not in config.cross_domain]
    return _in_domain_pools(in_domain, config)["eval"]


def prepare_data(model, tokenizer, config: DataConfig, *, fingerprint: str | None = None,
                 progress: bool = True) -> PreparedData:
    """Build the disjoint splits for ``model`` from the embedded prompts (answers cached)."""
    fingerprint = fingerprint or model_fingerprint(model)
    everything = harmful_prompts()
    known = {p.category for p in everything}
    unknown = [c for c in config.cross_domain if c not in known]
    if unknown:
        raise UnlearnableError(f"unknown cross-domain categories {unknown}; known: {', '.join(sorted(known))}")
    in_domain = [p for p in everything if p.category not in config.cross_domain]
    pools = _in_domain_pools(in_domain, config)
    general = [p for p in harmless_prompts() if p.category == "general"]
    other = [p for p in harmless_prompts() if p.category != "general"]
    hsplit = split(general, {"align": config.n_harmless_align,
                             "reserve": len(general) - config.n_harmless_align}, config.seed)
    cache = ResponseCache(model, tokenizer, config.response_tokens, fingerprint, progress=progress)
    cross = split([p for p in everything if p.category in config.cross_domain],
                  {"eval": config.n_cross_eval, "attack": config.cross_attack_pool}, config.seed) \
        if config.cross_domain else {"eval": [], "attack": []}
    vectors, attack, cross_attack, sources = harmful_splits(config, cache, pools, cross)
    # base answers for the first n_eval_loss eval prompts give the held-out harmful loss; the rest stay prompts
    n_loss = min(config.n_eval_loss, len(pools["eval"]))
    eval_answers = cache.answers([p.prompt for p in pools["eval"][:n_loss]], desc="base answers (eval)")
    eval_answers += [""] * (len(pools["eval"]) - n_loss)
    eval_harmful = [dataclasses.replace(p, response=a if not (is_refusal(a) or is_degenerate(a)) else "")
                    for p, a in zip(pools["eval"], eval_answers)]
    h_align = [dataclasses.replace(p, response=a) for p, a in
               zip(hsplit["align"], cache.answers([p.prompt for p in hsplit["align"]], desc="base answers (harmless)"))]
    h_reserve = (hsplit["reserve"] + random.Random(config.seed).sample(other, len(other)))[:config.n_harmless]
    harmless = [dataclasses.replace(p, response=a) for p, a in
                zip(h_reserve, cache.answers([p.prompt for p in h_reserve], desc="base answers (harmless)"))]
    align = refusal_pairs(pools["align"], config.seed) + [p for p in h_align for _ in range(config.harmless_repeats)]
    task = profileqa(config.n_profiles, config.seed)
    cross_eval = cross["eval"]
    check_disjoint(eval=eval_harmful, align=pools["align"], vectors=vectors, attack=attack, cross_eval=cross_eval,
                   cross_attack=cross_attack)
    check_disjoint(align=h_align, harmless=harmless, task=task)
    data = PreparedData(eval_harmful=eval_harmful, align=align, vector_pairs=vectors, attack=attack,
                        harmless=harmless, task=task, cross_eval=cross_eval, cross_attack=cross_attack,
                        sources=sources)
    data.hashes = {k: pairs_hash(getattr(data, k)) for k in SPLITS}
    return data


def harmful_splits(config: DataConfig, cache: ResponseCache, pools: dict, cross: dict):
    """The vectors', the attacker's and the cross-domain attack's harmful pairs, and where they came from: the
    user's own (``data.harmful_pairs``) or the model's compliant answers to the embedded prompts."""
    if config.harmful_pairs:
        return own_harmful_splits(config, reserved=[*pools["eval"], *pools["align"], *cross["eval"]])
    vectors = cache.compliant(pools["vectors"], config.n_vectors, "vectors")
    attack = cache.compliant(pools["attack"], config.n_attack, "attack", answers=config.attack_answers)
    cross_attack = cache.compliant(cross["attack"], config.n_cross_attack, "cross_attack") if cross["attack"] else []
    return vectors, attack, cross_attack, dict.fromkeys(("vector_pairs", "attack", "cross_attack"),
                                                        "the model's own compliant answers to the embedded prompts")


def own_harmful_splits(config: DataConfig, reserved: Sequence[Pair]) -> tuple[list, list, list, dict[str, str]]:
    """The user's harmful pairs (``config.harmful_pairs``) as the vectors', the attacker's and (those of the
    ``cross_domain`` categories) the cross-domain attack's pairs, seeded and disjoint; pairs whose prompt is among
    ``reserved`` (the held-out evaluation and alignment prompts) are left out."""
    taken = {normalize(p.prompt) for p in reserved}
    pairs = [dataclasses.replace(p, harmful=True) for p in dedupe(load_pairs(config.harmful_pairs))
             if normalize(p.prompt) not in taken]
    rng = random.Random(config.seed)
    cross = [p for p in pairs if p.category in config.cross_domain]
    rng.shuffle(cross)
    cross = cross[:config.n_cross_attack]
    own = [p for p in pairs if p.category not in config.cross_domain]
    rng.shuffle(own)
    vectors, attack = own[:config.n_vectors], own[config.n_vectors:config.n_vectors + config.n_attack]
    if len(vectors) + len(attack) < config.n_vectors + config.n_attack:
        raise UnlearnableError(
            f"{config.harmful_pairs} has {len(own)} usable harmful pairs (distinct prompts, none of the held-out "
            f"evaluation or alignment prompts); data.n_vectors={config.n_vectors} + data.n_attack={config.n_attack} "
            "are needed: give more pairs or lower them")
    where = f"{config.harmful_pairs} ({pairs_hash(pairs)})"
    return vectors, attack, cross, {"vector_pairs": where, "attack": where,
                                    "cross_attack": where if cross else "none (no pairs of the cross-domain "
                                                                         "categories in the file)"}


#: harmless pairs after the stability ones that a defence may train on (a flagger's threshold, vectors anchored
#: on harmless answers), never scored: immunize's ``n_defense_harmless`` default and the demo's share
DEFENSE_HARMLESS = 30
#: the splits of :class:`PreparedData`, as results files name them
SPLITS = ("eval_harmful", "align", "vector_pairs", "attack", "harmless", "task", "cross_eval", "cross_attack")


def align(model, tokenizer, data: PreparedData, config: TrainConfig, *, fingerprint: str,
          progress: bool = True):
    """Safety-align a model that is not aligned (refusals + its own harmless answers); cached by inputs."""
    from transformers import AutoModelForCausalLM

    key = sha256_json({"fp": fingerprint, "data": data.hashes["align"], "cfg": keyed(dataclasses.asdict(config)),
                       "system": getattr(tokenizer, SYSTEM_ATTR, None), **encoding_key(tokenizer)})[:16]
    path = cache_dir() / "aligned" / key
    with locked(path, wait=True, what="aligned-model cache"):  # a second process waits, then loads this one
        if (path / MODEL_META).is_file():
            log(f"aligned model from cache ({path})")
            aligned = AutoModelForCausalLM.from_pretrained(path, dtype=next(model.parameters()).dtype)
            return aligned.to(next(model.parameters()).device).eval(), {"cached": True, "path": str(path)}
        log(f"aligning the model: {len(data.align)} examples (refusals + own harmless answers)")
        aligned, history = finetune(copy.deepcopy(model), tokenizer, data.align, config, progress=progress)
        save_model(aligned, tokenizer, path, metadata={"aligned_from": fingerprint,
                                                       "config": dataclasses.asdict(config)})
    return aligned, {"cached": False, "path": str(path), "history": history}


@dataclasses.dataclass
class Setup:
    """What every experiment starts from: the (aligned) model, its tokenizer, the data splits, provenance."""

    model: Any
    tokenizer: Any
    data: PreparedData
    base_fingerprint: str
    fingerprint: str                  # of ``model`` (the aligned one when aligned)
    precision: str
    align_info: dict[str, Any]
    name: str
    #: the weights before alignment, loaded on call (None when the model was not aligned here)
    unaligned: Callable[[], Any] | None = None
    #: ``model`` loaded again from disk (its cache entry or its source), checked by fingerprint; None where the
    #: caller gave the model (it stays in the caller's memory anyway)
    reload: Callable[[], Any] | None = None

    def working_copy(self):
        """The model for a run that changes it. Where ``model`` can be loaded again from disk (``reload``), the
        one in memory is handed over the first time (``self.model`` is then None) and a fresh one is loaded for
        each later call, so that an experiment holds one copy of the weights while it trains, not two; else a
        deep copy."""
        if self.reload is None:
            return copy.deepcopy(self.model)
        model, self.model = (self.model if self.model is not None else self.reload()), None
        return model

    def model_record(self) -> dict[str, str]:
        return {"name": self.name, "base_fingerprint": self.base_fingerprint, "aligned_fingerprint": self.fingerprint}

    def data_record(self) -> dict[str, Any]:
        return {"hashes": self.data.hashes, "sizes": {k: len(getattr(self.data, k)) for k in self.data.hashes},
                **({"sources": self.data.sources} if self.data.sources else {})}


@dataclasses.dataclass
class LoadOptions:
    """How models are loaded: what the user allows (``--trust-remote-code``, ``--allow-pickle``); not part of any
    result, since a model that loads at all has the same weights either way."""

    trust_remote_code: bool = False
    allow_pickle: bool = False

    def check(self, model: str | None) -> None:
        """Check ``model`` (path, weight format, config) before the slow imports and any training."""
        check_model(model, trust_remote_code=self.trust_remote_code, allow_pickle=self.allow_pickle)

    def load(self, model: str | None, device: str | None = None):
        return load_model(model, device=device or launch_device(), trust_remote_code=self.trust_remote_code,
                          allow_pickle=self.allow_pickle)


def set_up(model_name: str | None, data_config: DataConfig, *, seed: int, align_model: bool = True,
           align_config: TrainConfig | None = None, timings: Timings | None = None, progress: bool = True,
           model=None, tokenizer=None, data: PreparedData | None = None, precision: str = "auto",
           load: LoadOptions | None = None) -> Setup:
    """Load (unless ``model``/``tokenizer`` are given; as ``load`` allows) -> system prompt -> fingerprint -> data
    splits (unless ``data`` is given) -> alignment (cached), each stage timed."""
    timings = timings if timings is not None else Timings()
    load = load or LoadOptions()
    keep_large_blocks_out_of_the_heap()
    git_hash()  # the code version the results will name: the one at the start
    set_seed(seed)
    with timings("load_model"):
        base, tok = (model, tokenizer) if model is not None else load.load(model_name)
        if data_config.system_prompt is not None:
            set_system_prompt(tok, data_config.system_prompt)
        fp_base = model_fingerprint(base)
    device = next(base.parameters()).device
    resolved = resolve_precision(precision, device)
    log(f"model {base.config.name_or_path} (fingerprint {fp_base}), device {device}, precision {resolved}")
    with timings("load_model"):
        check_answers(base, tok)
    with timings("prepare_data"):
        data = data or prepare_data(base, tok, data_config, fingerprint=fp_base, progress=progress)
    with timings("align"):
        if align_model:
            aligned, info = align(base, tok, data, align_config or TrainConfig(), fingerprint=fp_base,
                                  progress=progress)
        else:
            aligned, info = base, {"skipped": True}
        fp = model_fingerprint(aligned)
    unaligned = None
    if align_model:  # given: already in the caller's memory; loaded: loaded again only if a defence asks
        unaligned = (lambda: base) if model is not None else (lambda: load.load(model_name, str(device))[0])
    reload = None if model is not None else _reloader(model_name, info.get("path"), aligned, fp, load)
    return Setup(aligned, tok, data, fp_base, fp, resolved, {k: v for k, v in info.items() if k != "history"},
                 name=model_name or "default:SmolLM2-135M-Instruct", unaligned=unaligned, reload=reload)


def _reloader(model_name: str | None, aligned_path: str | None, model, fingerprint: str,
              load: LoadOptions) -> Callable[[], Any]:
    """Load ``model`` again (from its aligned-model cache entry, else its source) on its device and dtype."""
    first = next(model.parameters())
    device, dtype = first.device, first.dtype

    def reload():
        from transformers import AutoModelForCausalLM

        if aligned_path is not None:
            again = AutoModelForCausalLM.from_pretrained(aligned_path, dtype=dtype).to(device).eval()
        else:
            again = load.load(model_name, str(device))[0].to(dtype)
        if model_fingerprint(again) != fingerprint:
            raise UnlearnableError(f"the model loaded again from disk is not the one the run started with "
                                   f"(fingerprint {model_fingerprint(again)}, expected {fingerprint}): its files "
                                   "changed during the run; start it again")
        return again

    return reload


#: harmless prompts that any working chat or base model continues with words of its own
CHECK_PROMPTS = ("Write two sentences about the sea.", "Explain in two sentences why the sky is blue.",
                 "Describe a cat in two sentences.")
#: set (to anything) to skip :func:`check_answers`, e.g. for test suites on random models
SKIP_CHECK_ENV = "UNLEARNABLE_SKIP_MODEL_CHECK"


def check_answers(model, tokenizer) -> None:
    """Before any expensive stage: a model whose answers to :data:`CHECK_PROMPTS` are all empty or one word
    repeated is loaded or encoded wrongly, and nothing downstream (harmful pairs, alignment, scores) would mean
    anything; fail in one line that says what to check."""
    if os.environ.get(SKIP_CHECK_ENV):
        return
    answers = generate(model, tokenizer, list(CHECK_PROMPTS), max_new_tokens=24, progress=False)
    if all(repetitive(a) for a in answers):
        raise UnlearnableError(
            f"the model's answers to harmless prompts are degenerate (e.g. {answers[0][:60]!r}): check the "
            "tokenizer's BOS token and chat template, the precision (eval.precision: fp32) and, for a GGUF file, its "
            f"conversion (set {SKIP_CHECK_ENV}=1 to run anyway)")


def repetitive(text: str) -> bool:
    """Empty, mostly one word repeated (``Assistant Assistant Assistant ...``) or one short unit over and over
    (``!!!!!!!!``, ``AssAssAssAss``)."""
    words = text.split()
    if not words:
        return True
    if len(words) >= 4 and len(set(words)) / len(words) < 0.3:
        return True
    return re.fullmatch(r"(.{1,24}?)\1{3,}.{0,24}", "".join(words), flags=re.DOTALL) is not None


def envelope(kind: str, config: Any, *, start: float, timings: Timings, **fields: Any) -> dict[str, Any]:
    """The results file every experiment writes: what it is, what made it, when and on what, how long."""
    return {"kind": kind, "schema_version": SCHEMA_VERSION, **fields, "config": dataclasses.asdict(config),
            "seconds": round(time.perf_counter() - start, 1), "timings": timings.as_dict(), "resources": resources(),
            **run_metadata()}
