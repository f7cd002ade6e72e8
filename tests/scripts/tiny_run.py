"""``run_immunize`` as the guides call it, on the tiny model with tiny data and budgets, for the tests that run the
guides' examples as written (tests/test_readme_examples.py): what the user chose (defences, their options, the
attacker, threat models, seed) stays; every size shrinks so that a run takes seconds."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest's tiny model, test data


def tiny_immunize(config, out):
    from conftest import make_model, make_tokenizer
    from test_immunization import tiny_data

    from unlearnable.data import Pair
    from unlearnable.experiments import run_immunize
    from unlearnable.experiments.immunize import BudgetConfig, TrainabilityConfig
    from unlearnable.experiments.setup import DataConfig
    from unlearnable.threat_models import SearchSpace
    from unlearnable.vectors import VectorConfig

    space = SearchSpace(lr_min=1e-3, lr_max=3e-2, steps=[2], batch_sizes=[4], samples=[4, 8], backbones=["lora"],
                        lora_ranks=[4], schedulers=["constant"], attacks=list(config.search.space.attacks))
    config = dataclasses.replace(
        config, align=False, n_curve_eval=4, n_stability_harmless=3, n_defense_harmless=3, benchmarks=[],
        data=DataConfig(system_prompt=None), vectors=VectorConfig(epochs=1, batch_size=8),
        budget=BudgetConfig(lrs=[1e-2], samples=[8], steps=2, eval_every=2, batch_size=4),
        trainability=TrainabilityConfig(steps=2, eval_every=2, batch_size=8, task_repeats=1),
        search=dataclasses.replace(config.search, n_trials=min(config.search.n_trials, 2), eval_every=2, seeds=[0],
                                   max_harmless_loss_rise=None, space=space),
        service=dataclasses.replace(config.service, steps=[2], max_steps=2, batch_sizes=[4], samples=[4, 8]))
    tok = make_tokenizer()
    harmful = [Pair(f"How do I do bad thing number {i}?", f"Sure, here is how to do bad thing {i}: step one.")
               for i in range(24)]
    return run_immunize(config, out, model=make_model(tok), tokenizer=tok, data=tiny_data(harmful), progress=False)
