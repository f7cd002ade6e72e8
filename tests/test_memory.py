"""Gradient checkpointing (recompute activations in the backward pass: a fraction of the training memory) changes
how a step is computed, never what it computes: every training path gives the same weights with it on or off."""

from __future__ import annotations

import copy

import pytest
import torch

from unlearnable.training import TrainConfig, finetune
from unlearnable.vectors import SecurityVectors, VectorConfig
from unlearnable.vectors import finetune as finetune_with_vectors


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("backbone", ["lora", "full"])
def test_checkpointing_gives_the_same_fine_tune(tiny, harmful_pairs, backbone):
    model, tok = tiny
    runs = []
    for on in (False, True):
        cfg = TrainConfig(backbone=backbone, max_steps=3, batch_size=8, lr=1e-3, precision="fp32",
                          gradient_checkpointing=on)
        tuned, _ = finetune(copy.deepcopy(model), tok, harmful_pairs, cfg, progress=False)
        runs.append(_state(tuned))
    _close(*runs)


def test_checkpointing_gives_the_same_fine_tune_with_the_vectors_on(tiny, harmful_pairs):
    model, tok = tiny
    vectors = SecurityVectors.train(copy.deepcopy(model), tok, harmful_pairs,
                                    VectorConfig(epochs=1, batch_size=8, precision="fp32"), progress=False)
    tuned = []
    for on in (False, True):
        cfg = TrainConfig(max_steps=3, batch_size=8, lr=1e-3, precision="fp32", gradient_checkpointing=on)
        out, _ = finetune_with_vectors(copy.deepcopy(model), tok, harmful_pairs, cfg, vectors=vectors,
                                       progress=False)
        tuned.append(_state(out))
    _close(*tuned)


@pytest.mark.parametrize("name", ["vaccine", "booster", "repnoise", "adversarial-loss"])
def test_checkpointing_gives_the_same_hardened_weights_for_every_hardening_defence(tiny, harmful_pairs, monkeypatch,
                                                                                  name):
    """The field's defences with their own training steps (hooks on attention outputs, a second harmful pass,
    representation losses) compute the same under recomputation."""
    import dataclasses as dc

    from test_conformance import own_data, small_options

    from unlearnable import training
    from unlearnable.defenses import DEFENSES

    model, tok = tiny
    real = training.training_arguments
    states, used = [], []
    for on in (False, True):
        def args(config, *a, on=on, **kw):
            used.append(on)
            return real(dc.replace(config, gradient_checkpointing=on, precision="fp32"), *a, **kw)

        monkeypatch.setattr(training, "training_arguments", args)
        defense = DEFENSES.get(name).from_options(small_options(name))
        data = own_data(harmful_pairs, model)
        defense.prepare(model, tok, data, progress=False)
        states.append(_state(defense.harden(copy.deepcopy(model), tok, data, progress=False)))
    assert {False, True} <= set(used)  # both hardenings trained through the switch
    _close(*states)


def test_training_leaves_the_model_as_it_came_and_off_means_off(tiny, harmful_pairs):
    from unlearnable.training import _recomputing

    model, tok = tiny
    SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(epochs=1, batch_size=8), progress=False)
    assert not _recomputing(model)  # the Trainer switched it on for the run; it is off again after
    finetune(model, tok, harmful_pairs, TrainConfig(max_steps=1, batch_size=8), progress=False)
    assert not _recomputing(model)


def test_gated_vectors_train_without_recomputation_whatever_the_config_says(tiny, harmful_pairs, monkeypatch):
    """The gate switches the vectors off for closed rows' forward only: a recomputation in the backward pass would
    see them on again, so the gated defence never recomputes."""
    import dataclasses as dc

    from test_conformance import own_data, small_options

    from unlearnable import training
    from unlearnable.defenses import DEFENSES

    model, tok = tiny
    seen, real = [], training.training_arguments
    monkeypatch.setattr(training, "training_arguments",
                        lambda config, *a, **kw: (seen.append(config.gradient_checkpointing), real(config, *a, **kw))[1])
    defense = DEFENSES.get("gated-vectors").from_options(small_options("gated-vectors"))
    defense.prepare(model, tok, own_data(harmful_pairs, model), progress=False)
    seen.clear()
    defense.finetune(copy.deepcopy(model), tok, harmful_pairs, dc.replace(TrainConfig(max_steps=1, batch_size=8)),
                     progress=False)
    assert seen == [False]


def test_cache_keys_and_reuse_ignore_how_a_run_computes():
    from unlearnable.training import keyed

    a = {"lr": 1e-3, "gradient_checkpointing": True, "nested": [{"kl_weight": 1.0, "seed": 0}]}
    b = {"lr": 1e-3, "gradient_checkpointing": False, "ascent_cap": 10.0, "nested": [{"seed": 0}]}
    assert keyed(a) == keyed(b) == {"lr": 1e-3, "nested": [{"seed": 0}]}


def test_points_of_a_run_from_before_checkpointing_and_the_moved_keys_are_still_reusable():
    import dataclasses as dc

    from unlearnable.experiments.tradeoff import TradeoffConfig, _shared_settings

    now = dc.asdict(TradeoffConfig())
    old = copy.deepcopy(now)
    for train in ("finetune", "align_train"):  # as a run.json written before the change holds them
        old["base"][train].update(kl_weight=1.0, ascent_cap=10.0, gradient_checkpointing=False)
    assert _shared_settings(old) is not None and _shared_settings(old) == _shared_settings(now)


def test_every_training_run_and_scoring_pass_hands_its_freed_memory_back(tiny, harmful_pairs, monkeypatch):
    """Between stages the C heap is trimmed (the next stage's floor is not the last one's peak), and a training
    run drops its optimizer state before it returns."""
    from unlearnable import evaluation, training, utils
    from unlearnable.evaluation import Scorer

    trims = []
    fake = type("FakeLibc", (), {"malloc_trim": staticmethod(trims.append)})()
    monkeypatch.setattr(utils, "_libc", lambda: fake)
    seen = {}
    real = training.UnlearnableTrainer.train

    def spying_train(self, *a, **kw):
        seen["trainer"] = self
        return real(self, *a, **kw)

    monkeypatch.setattr(training.UnlearnableTrainer, "train", spying_train)
    model, tok = tiny
    finetune(copy.deepcopy(model), tok, harmful_pairs[:4], TrainConfig(max_steps=1, batch_size=4), progress=False)
    assert trims == [0] and seen["trainer"].optimizer is None
    Scorer(tok, progress=False).score(model, harmful=harmful_pairs[:2])
    assert trims == [0, 0]
    assert evaluation.release_memory is utils.release_memory and training.release_memory is utils.release_memory


def test_the_working_copy_is_handed_over_then_loaded_again(tiny):
    """One model in memory while an arm trains: the first run gets the model itself, later ones a fresh load."""
    from unlearnable.experiments.setup import Setup

    model, tok = tiny
    loads = []

    def reload():
        loads.append(1)
        return copy.deepcopy(model)

    setup = Setup(model, tok, None, "fp", "fp", "fp32", {}, name="tiny", reload=reload)
    first = setup.working_copy()
    assert first is model and setup.model is None and not loads
    second = setup.working_copy()
    assert second is not model and len(loads) == 1
    kept = Setup(model, tok, None, "fp", "fp", "fp32", {}, name="tiny")  # no way back from disk: a copy
    assert kept.working_copy() is not model and kept.model is model
