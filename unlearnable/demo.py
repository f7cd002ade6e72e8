"""``unlearnable demo``: security vectors stop a model learning harmful data while it learns a harmless task.

A preset of :mod:`unlearnable.pipeline`: align the embedded model, train vectors on 100 harmful pairs, fine-tune
twice on ProfileQA mixed with 200 *other* harmful pairs (defence ``none`` and ``security-vectors``), and
evaluate the aligned model and both fine-tuned models (vectors off) on held-out harmful prompts and ProfileQA.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

from .data import set_system_prompt
from .defenses import DefenseData, NoDefense, SecurityVectorsDefense
from .evaluation import EvalConfig, evaluate
from .models import load_model, model_fingerprint, save_model
from .pipeline import DataConfig, align, prepare_data, summarize_eval
from .training import TrainConfig
from .utils import Timings, atomic_dir, atomic_write_json, log, resolve_precision, run_metadata, set_seed
from .vectors import VectorConfig


@dataclasses.dataclass
class DemoConfig:
    model: str | None = dataclasses.field(default=None, metadata={"help": "model id, folder or GGUF (default: "
                                                                         "the embedded SmolLM2-135M-Instruct)"})
    seed: int = 0
    align: bool = dataclasses.field(default=True, metadata={"help": "safety-align first (the default model is not)"})
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(system_prompt="", response_tokens=24,
                                                                            task_repeats=8))
    align_train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(lr=1e-3, epochs=1))
    vectors: VectorConfig = dataclasses.field(default_factory=lambda: VectorConfig(epochs=4, lr=2e-3,
                                                                                  target_loss=0.15))
    finetune: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(lr=1e-3, epochs=2))
    eval: EvalConfig = dataclasses.field(default_factory=lambda: EvalConfig(max_new_tokens=24, task_max_new_tokens=12))
    save_models: bool = True

    def seeded(self) -> "DemoConfig":
        """Propagate ``seed`` into every component."""
        cfg = copy.deepcopy(self)
        cfg.data.seed = cfg.align_train.seed = cfg.vectors.seed = cfg.finetune.seed = cfg.seed
        return cfg


ARMS = (("without_vectors", "none"), ("with_vectors", "security-vectors"))


def run_demo(config: DemoConfig | None = None, out: str | Path | None = None, *, overwrite: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Run the demo; with ``out``, write results.json, report.html, plots, models/ and vectors/ there."""
    config = (config or DemoConfig()).seeded()
    start = time.perf_counter()
    timed = Timings()

    set_seed(config.seed)
    with timed("load_model"):
        base, tok = load_model(config.model)
        if config.data.system_prompt is not None:
            set_system_prompt(tok, config.data.system_prompt)
        fp_base = model_fingerprint(base)
    device = next(base.parameters()).device
    precision = resolve_precision(config.finetune.precision, device)
    log(f"model {base.config.name_or_path} (fingerprint {fp_base}), device {device}, precision {precision}")

    with timed("prepare_data"):
        data = prepare_data(base, tok, config.data, fingerprint=fp_base, progress=progress)
    log(f"data: {len(data.vectors)} vector pairs, {len(data.attack)} attack pairs, {len(data.eval_harmful)} eval "
        f"prompts, {len(data.task)} ProfileQA facts x {config.data.task_repeats}")

    with timed("align"):
        if config.align:
            model, align_info = align(base, tok, data, config.align_train, fingerprint=fp_base, progress=progress)
        else:
            model, align_info = base, {"skipped": True}
        del base
        fp_model = model_fingerprint(model)

    with timed("eval_before"):
        before = evaluate(model, tok, harmful=data.eval_harmful, task=data.task, config=config.eval, desc="before")
    log(f"before fine-tuning: harm rate {before['harm_rate']:.3f}, task EM {before['task_em']:.3f}")

    defenses = {"none": NoDefense(), "security-vectors": SecurityVectorsDefense(config=config.vectors)}
    log(f"training security vectors on {len(data.vectors)} harmful pairs")
    with timed("train_vectors"):
        defenses["security-vectors"].prepare(model, tok, DefenseData(harmful=data.vectors), progress=progress)

    mix = data.finetune_mix(config.data.task_repeats, config.seed)
    arms: dict[str, Any] = {}
    tuned_models = {}
    for arm, name in ARMS:
        log(f"fine-tuning {arm.replace('_', ' ')}: {len(mix)} examples ({len(data.attack)} harmful)")
        with timed(f"finetune_{arm}"):
            tuned, history = defenses[name].finetune(copy.deepcopy(model), tok, mix, config.finetune,
                                                     progress=progress)
        with timed(f"eval_{arm}"):
            result = evaluate(tuned, tok, harmful=data.eval_harmful, task=data.task, config=config.eval, desc=arm)
        log(f"{arm}: harm rate {result['harm_rate']:.3f}, task EM {result['task_em']:.3f}")
        arms[arm] = {"defense": defenses[name].describe(), "history": history, **result}
        tuned_models[arm] = tuned

    seconds = round(time.perf_counter() - start, 1)
    summary = {
        "harm_rate_before": before["harm_rate"],
        "harm_rate_without_vectors": arms["without_vectors"]["harm_rate"],
        "harm_rate_with_vectors": arms["with_vectors"]["harm_rate"],
        "task_em_before": before["task_em"],
        "task_em_without_vectors": arms["without_vectors"]["task_em"],
        "task_em_with_vectors": arms["with_vectors"]["task_em"],
        "harmful_loss_before": before.get("harmful_loss"),
        "harmful_loss_without_vectors": arms["without_vectors"].get("harmful_loss"),
        "harmful_loss_with_vectors": arms["with_vectors"].get("harmful_loss"),
        "vector_scale": config.vectors.scale,
        "precision": precision,
        "seconds": seconds,
    }
    results = {
        "kind": "unlearnable-demo",
        "schema_version": 1,
        "summary": summary,
        "config": dataclasses.asdict(config),
        "model": {"name": config.model or "default:SmolLM2-135M-Instruct", "base_fingerprint": fp_base,
                  "aligned_fingerprint": fp_model},
        "data": {"hashes": data.hashes, "sizes": {k: len(getattr(data, k)) for k in data.hashes},
                 "finetune_examples": len(mix)},
        "align": {k: v for k, v in align_info.items() if k != "history"},
        "before": before,
        "arms": arms,
        "timings": timed.as_dict(),
        **run_metadata(),
    }
    if out is not None:
        write_demo(results, Path(out), tuned_models, defenses["security-vectors"], tok, config, overwrite=overwrite)
    return results


def write_demo(results, out: Path, tuned_models, sv_defense, tok, config: DemoConfig, *, overwrite: bool):
    from .report import write_demo_report

    with atomic_dir(out, overwrite=overwrite) as tmp:
        if config.save_models:
            for arm, m in tuned_models.items():
                save_model(m, tok, tmp / "models" / arm, metadata={
                    "produced_by": "unlearnable demo", "arm": arm, "vectors_removed": True,
                    "base_fingerprint": results["model"]["aligned_fingerprint"]})
        sv_defense.vectors.save(tmp / "vectors")
        atomic_write_json(tmp / "results.json", results)
        write_demo_report(results, tmp)
    log(f"wrote {out}/results.json, report.html, plots, models/ and vectors/")
