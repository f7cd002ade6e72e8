"""Trainability: the user's harmless fine-tune (ProfileQA) through a defence, and what the user is served after it.

Shared by the immunization harness (its *Trainability* condition, on the evaluation's task) and defence tuning (a
probe on a task of the defence's own, whose people are none of the evaluation's), so that both measure it the
same way.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from typing import Any, Sequence

from ..data import Pair, make_profiles, prompt_hash
from ..defenses import Defense
from ..evaluation import CurveCallback, Scorer
from ..training import TrainConfig
from ..utils import log


@dataclasses.dataclass
class TrainabilityConfig:
    """The user's harmless fine-tune (ProfileQA) after the defence: a budget in which the undefended model learns."""

    lr: float = 1e-3
    steps: int = 48
    eval_every: int = 16
    batch_size: int = 16
    task_repeats: int = 8


def user_finetune(defense: Defense, hardened, tok, scorer: Scorer, task: Sequence[Pair], config: TrainabilityConfig,
                  seed: int, *, curve: bool = True, progress: bool = True, label: str = "",
                  harmless: Sequence[Pair] = (), harmful: Sequence[Pair] = (),
                  harm_prompts: Sequence[Pair] = ()) -> dict[str, Any]:
    """Fine-tune a copy of ``hardened`` on ``task`` (each fact ``task_repeats`` times) the way ``defense`` fine-tunes
    for a user: the task's exact match along the steps (every ``eval_every``; at the end only, unless ``curve``) and
    the utility benchmarks, as the defence serves the model; with ``harmless`` prompts, also how many of them the
    user's model then refuses (a defence that acts in the fine-tune can leave it refusing more). ``harmful`` pairs
    join the facts (as many copies each), and the harm rate on ``harm_prompts`` after is scored."""
    pairs = [p for p in [*task, *harmful] for _ in range(config.task_repeats)]
    random.Random(seed).shuffle(pairs)

    def point(m, step):
        with defense.serving(m):
            return {"task_em": scorer.task(m, task, desc=f"{label}{defense.name} task step {step}")["task_em"]}

    cb = CurveCallback(config.eval_every if curve else config.steps, point)
    t0 = time.perf_counter()
    tcfg = TrainConfig(lr=config.lr, max_steps=config.steps, batch_size=config.batch_size, seed=seed,
                       logging_steps=max(1, config.steps // 4))
    log(f"defence {defense.name}: {label}trainability (ProfileQA) for {config.steps} steps")
    final, _ = defense.finetune(copy.deepcopy(hardened), tok, pairs, tcfg, progress=progress, callbacks=[cb])
    if defense.post_training:  # e.g. buffer-reinforce: served as it is only after the run
        cb.points[-1] = {"step": config.steps, **point(final, config.steps), "after_post_training": True}
    with defense.serving(final):  # the utility the user is served after their fine-tune
        utility = scorer.utility(final)
        if harmless:
            refusal = scorer.over_refusal(final, harmless, desc=f"{label}{defense.name} harmless after the task")
            utility.update({k: v for k, v in refusal.items() if k != "harmless_generations"})
        if harm_prompts:
            harm = scorer.harm(final, harm_prompts, desc=f"{label}{defense.name} harm after the task")
            utility.update({"harm_rate": harm["harm_rate"], "n_harmful": len(harmful)})
    points = [{"step": 0, "task_em": 0.0}] + cb.points
    return {"curve": points, "final_task_em": points[-1]["task_em"], "n_task": len(task), **utility,
            "seconds": round(time.perf_counter() - t0, 1)}


def own_task(n_profiles: int, seed: int, exclude: Sequence[Pair]) -> list[Pair]:
    """ProfileQA facts of ``n_profiles`` people drawn with ``seed``, none of them asked about in ``exclude`` (the
    evaluation's task): defence tuning's trainability probe never reads the evaluation's task."""
    taken = {prompt_hash(p) for p in exclude}
    people = [prof.qa() for prof in make_profiles(n_profiles + len(exclude), seed)]
    fresh = [facts for facts in people if not taken & {prompt_hash(p) for p in facts}]
    return [p for facts in fresh[:n_profiles] for p in facts]
