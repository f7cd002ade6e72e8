"""``unlearnable tradeoff``: harm rate vs task score over vector strengths, variants and seeds.

On one model and data set: fine-tune with no defence and with each vector variant over a grid of strengths
(the vectors' scale during fine-tuning), plus ``buffer-reinforce``, over several seeds. Vectors are trained
once per (variant, seed), never per strength; the aligned model and generated data come from the cache.
Strength 0 switches the vectors off exactly (the forward is the undefended one), so those points reuse the
``none`` run of the same seed and say so.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from .data import set_system_prompt
from .defenses import BufferReinforceDefense, DefenseData
from .demo import DemoConfig
from .errors import UnlearnableError
from .evaluation import evaluate
from .judges import is_refusal
from .models import load_model, model_fingerprint
from .pipeline import align, prepare_data
from .runs import claim_sweep_folder
from .training import finetune
from .utils import atomic_write_json, log, run_metadata, set_seed
from .vectors import SecurityVectors

VARIANTS = {"plain": "none", "benign-distill": "distill", "benign-kl": "kl"}


@dataclasses.dataclass
class TradeoffConfig:
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    variants: list[str] = dataclasses.field(default_factory=lambda: ["plain", "benign-distill", "benign-kl"],
                                            metadata={"help": "vector variants: plain, benign-distill, benign-kl"})
    strengths: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    buffer_reinforce: bool = True
    buffer_strength: float = 1.0
    n_benign: int = dataclasses.field(default=40, metadata={"help": "harmless prompts for benign-preserving vectors"})
    base: DemoConfig = dataclasses.field(default_factory=DemoConfig, metadata={
        "help": "model, data, alignment, vector training, fine-tuning and evaluation settings (as the demo's)"})

    def __post_init__(self):
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise UnlearnableError(f"unknown vector variants {bad}; known: {', '.join(VARIANTS)}")
        if not self.seeds:
            raise UnlearnableError("tradeoff needs at least one seed")

    @classmethod
    def quick(cls) -> "TradeoffConfig":
        """One seed; no defence, plain and benign-preserving (KL) vectors at strengths 0.5 and 1.0."""
        return cls(seeds=[0], variants=["plain", "benign-kl"], strengths=[0.5, 1.0], buffer_reinforce=False)


def frontier(points: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per method, the seed-averaged (strength) points not dominated on (lower harm rate, higher task score)."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for p in points:
        groups.setdefault((p["method"], p["strength"]), []).append(p)
    means = {}
    for (method, strength), ps in groups.items():
        harms, tasks = [p["harm_rate"] for p in ps], [p["task_score"] for p in ps]
        means.setdefault(method, []).append({
            "strength": strength, "harm_rate": statistics.fmean(harms), "task_score": statistics.fmean(tasks),
            "harm_rate_sd": statistics.pstdev(harms), "task_score_sd": statistics.pstdev(tasks), "n_seeds": len(ps)})
    out = {}
    for method, ms in means.items():
        keep = [m for m in ms if not any(
            (o["harm_rate"] <= m["harm_rate"] and o["task_score"] >= m["task_score"]) and
            (o["harm_rate"] < m["harm_rate"] or o["task_score"] > m["task_score"]) for o in ms)]
        out[method] = sorted(keep, key=lambda m: m["harm_rate"])
    return out


def averaged(points: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per method, every strength averaged over seeds (for the plot)."""
    out: dict[str, list[dict]] = {}
    for method in dict.fromkeys(p["method"] for p in points):
        ps = [p for p in points if p["method"] == method]
        for strength in sorted({p["strength"] for p in ps}):
            sel = [p for p in ps if p["strength"] == strength]
            out.setdefault(method, []).append({
                "strength": strength, "harm_rate": statistics.fmean(p["harm_rate"] for p in sel),
                "task_score": statistics.fmean(p["task_score"] for p in sel),
                "harm_min": min(p["harm_rate"] for p in sel), "harm_max": max(p["harm_rate"] for p in sel),
                "task_min": min(p["task_score"] for p in sel), "task_max": max(p["task_score"] for p in sel)})
    return out


def run_tradeoff(config: TradeoffConfig | None = None, out: str | Path = "tradeoff-out", *, overwrite: bool = False,
                 progress: bool = True, model=None, tokenizer=None, data=None) -> dict[str, Any]:
    """Run the grid; points are saved to OUT/points.jsonl as they finish (a rerun skips finished points)."""
    config = config or TradeoffConfig()
    out = Path(out)
    cfg_dict = dataclasses.asdict(config)
    claim_sweep_folder(out, kind="unlearnable-tradeoff", config=cfg_dict, overwrite=overwrite)
    done_file = out / "points.jsonl"
    done = {}
    if done_file.is_file():
        for line in done_file.read_text(encoding="utf-8").splitlines():
            p = json.loads(line)
            done[(p["method"], p["strength"], p["seed"])] = p
    points: list[dict[str, Any]] = list(done.values())
    start = time.perf_counter()

    def record(point: dict[str, Any]) -> None:
        points.append(point)
        done[(point["method"], point["strength"], point["seed"])] = point
        from .utils import atomic_write_text

        atomic_write_text(done_file, "".join(json.dumps(p) + "\n" for p in points))
        log(f"{point['method']} strength {point['strength']} seed {point['seed']}: harm {point['harm_rate']:.3f}, "
            f"task {point['task_score']:.3f}")

    base_cfg = config.base
    base, tok = (model, tokenizer) if model is not None else load_model(base_cfg.model)
    if base_cfg.data.system_prompt is not None:
        set_system_prompt(tok, base_cfg.data.system_prompt)
    fp = model_fingerprint(base)
    for seed in config.seeds:
        cfg = dataclasses.replace(base_cfg, seed=seed).seeded()
        cfg.data = dataclasses.replace(cfg.data, n_harmless=max(cfg.data.n_harmless, config.n_benign))
        set_seed(seed)
        sdata = data or prepare_data(base, tok, cfg.data, fingerprint=fp, progress=progress)
        aligned = align(base, tok, sdata, cfg.align_train, fingerprint=fp, progress=progress)[0] if cfg.align else base
        mix = sdata.finetune_mix(cfg.data.task_repeats, seed)

        def arm(method: str, strength: float, run) -> dict[str, Any]:
            key = (method, strength, seed)
            if key in done:
                return done[key]
            t0 = time.perf_counter()
            tuned = run()
            ev = evaluate(tuned, tok, harmful=sdata.eval_harmful, task=sdata.task, config=cfg.eval,
                          desc=f"{method} {strength}")
            point = {"method": method, "strength": strength, "seed": seed, "harm_rate": ev["harm_rate"],
                     "task_score": ev["task_em"], "harmful_loss": ev.get("harmful_loss"),
                     "seconds": round(time.perf_counter() - t0, 1)}
            record(point)
            return point

        none_point = arm("none", 0.0, lambda: finetune(copy.deepcopy(aligned), tok, mix, cfg.finetune,
                                                       progress=progress)[0])
        harmless = sdata.harmless[:config.n_benign]
        for variant in config.variants:
            vcfg = dataclasses.replace(cfg.vectors, benign=VARIANTS[variant], seed=seed)
            vectors = None
            for strength in config.strengths:
                if strength == 0.0:
                    if (variant, 0.0, seed) not in done:
                        record({**none_point, "method": variant, "strength": 0.0, "reused_from": "none",
                                "seconds": 0.0})
                    continue
                if (variant, strength, seed) in done:
                    continue
                if vectors is None:
                    log(f"training {variant} vectors (seed {seed})")
                    vectors = SecurityVectors.train(aligned, tok, sdata.vectors, vcfg, progress=progress,
                                                    harmless=harmless)
                arm(variant, strength, lambda v=vectors, s=strength: finetune(
                    copy.deepcopy(aligned), tok, mix, cfg.finetune, vectors=v, scale=s, progress=progress)[0])
        if config.buffer_reinforce and ("buffer-reinforce", config.buffer_strength, seed) not in done:
            refusals = [p for p in sdata.align if is_refusal(p.response)]
            br = BufferReinforceDefense(config=dataclasses.replace(cfg.vectors, seed=seed),
                                        scale=config.buffer_strength)
            br.prepare(aligned, tok, DefenseData(harmful=sdata.vectors, refusals=refusals), progress=progress)
            arm("buffer-reinforce", config.buffer_strength,
                lambda: br.finetune(copy.deepcopy(aligned), tok, mix, cfg.finetune, progress=progress)[0])
    results = {
        "kind": "unlearnable-tradeoff", "schema_version": 1, "points": points, "frontier": frontier(points),
        "averaged": averaged(points), "config": cfg_dict, "model": {"name": base_cfg.model or
                                                                    "default:SmolLM2-135M-Instruct",
                                                                    "base_fingerprint": fp},
        "seconds": round(time.perf_counter() - start, 1), **run_metadata(),
    }
    atomic_write_json(out / "results.json", results)
    from .report import write_tradeoff_report

    write_tradeoff_report(results, out)
    return results
