"""The demo's with-vectors arm runs the configured defence that holds vectors (``defense``), e.g. adaptive vectors
that screen the fine-tuning data first; the defence's own harmless pairs are never the ones over-refusal scores."""

from __future__ import annotations

import json

import pytest

from unlearnable.config import from_dict
from unlearnable.defenses import DEFENSES
from unlearnable.errors import UnlearnableError
from unlearnable.experiments import demo as demo_module
from unlearnable.experiments.demo import DEFENSE_HARMLESS, DemoConfig, run_demo
from unlearnable.training import TrainConfig
from unlearnable.vectors import VectorConfig


def _tiny_demo(tiny, harmful_pairs, monkeypatch, **options):
    from test_immunization import tiny_data

    model, tok = tiny
    data, seen = tiny_data(harmful_pairs), {"defense_data": {}}
    data.hashes = {k: "x" for k in ("eval_harmful", "vector_pairs", "attack", "harmless", "task")}
    real_set_up, real_prepared = demo_module.set_up, demo_module.prepared

    def set_up(model_name, data_config, **kw):
        seen["n_harmless"] = data_config.n_harmless
        return real_set_up(model_name, data_config, **{**kw, "model": model, "tokenizer": tok, "data": data})

    def prepared(name, options, *args, **kw):
        seen["defense_data"][name] = args[2]
        return real_prepared(name, options, *args, **kw)

    monkeypatch.setattr(demo_module, "set_up", set_up)
    monkeypatch.setattr(demo_module, "prepared", prepared)
    cfg = DemoConfig(align=False, vectors=VectorConfig(epochs=1, batch_size=8, holdout=0.25), benchmarks=[],
                     save_models=False,
                     finetune=TrainConfig(max_steps=2, batch_size=8), **options)
    cfg.data.system_prompt, cfg.data.task_repeats, cfg.data.n_harmless = None, 1, 4
    return data, seen, cfg


def test_an_adaptive_arm_screens_the_mix_and_its_harmless_pairs_are_not_the_over_refusal_ones(
        tiny, harmful_pairs, monkeypatch, tmp_path):
    data, seen, cfg = _tiny_demo(tiny, harmful_pairs, monkeypatch, defense="adaptive-vectors",
                                 defense_options={"flagger": "vector-gain", "refit": "all"})
    results = run_demo(cfg, tmp_path / "d", progress=False)
    assert seen["n_harmless"] == 4 + DEFENSE_HARMLESS  # the flagger's calibration pairs come after the scored ones
    assert seen["defense_data"]["adaptive-vectors"].harmless == data.harmless[4:]
    assert not seen["defense_data"]["none"].harmless
    arm = results["arms"]["with_vectors"]
    assert arm["defense"]["name"] == "adaptive-vectors" and arm["defense"]["flagger"]["flagger"] == "vector-gain"
    assert len(arm["defense"]["screened"]) == 1 and arm["defense"]["options"]["refit"] == "all"
    # the vectors' settings are the demo's vectors.*, the early-stopped length and hold-out too
    assert arm["defense"]["options"]["epochs"] == cfg.vectors.epochs == 1
    assert arm["defense"]["options"]["holdout"] == cfg.vectors.holdout
    for scores in (results["before"], arm, results["arms"]["without_vectors"]):
        assert [g["prompt"] for g in scores["harmless_generations"]] == [p.prompt for p in data.harmless[:4]]
    saved = json.loads((tmp_path / "d" / "results.json").read_text())
    assert saved["config"]["defense"] == "adaptive-vectors"
    assert (tmp_path / "d" / "vectors" / "adapter_model.safetensors").is_file()
    assert "with vectors: adaptive-vectors (flagger vector-gain)" in (tmp_path / "d" / "report.html").read_text()


def test_the_default_arm_gets_no_harmless_pairs_and_asks_for_none(tiny, harmful_pairs, monkeypatch, tmp_path):
    _, seen, cfg = _tiny_demo(tiny, harmful_pairs, monkeypatch)
    results = run_demo(cfg, None, progress=False)
    assert seen["n_harmless"] == 4 and seen["defense_data"]["security-vectors"].harmless == []
    assert results["arms"]["with_vectors"]["defense"]["name"] == "security-vectors"


def test_a_refusal_anchored_arm_trains_the_alignment_refusals_as_served(tiny, harmful_pairs, monkeypatch, tmp_path):
    data, seen, cfg = _tiny_demo(tiny, harmful_pairs, monkeypatch, defense="early-stopped-vectors",
                                 defense_options={"refusal_anchors": 1})
    results = run_demo(cfg, None, progress=False)
    assert seen["defense_data"]["early-stopped-vectors"].refusals == data.refusals() != []
    assert not seen["defense_data"]["none"].refusals
    (anchors,) = results["arms"]["with_vectors"]["defense"]["anchors"]
    assert (anchors["copies"], anchors["refusal_pairs"], anchors["refusal_copies"]) == (0, len(data.refusals()), 1)


def test_the_arm_is_scored_as_its_defence_serves_it_and_an_emulated_flagger_is_labelled(
        tiny, harmful_pairs, monkeypatch, tmp_path):
    from unlearnable.defenses.adaptive_vectors import AdaptiveVectorsDefense

    _, _, cfg = _tiny_demo(tiny, harmful_pairs, monkeypatch, defense="adaptive-vectors",
                           defense_options={"flagger": "oracle:1.0"})
    served = []
    real = AdaptiveVectorsDefense.serving

    def serving(self, model):
        served.append(model)
        return real(self, model)

    monkeypatch.setattr(AdaptiveVectorsDefense, "serving", serving)
    run_demo(cfg, tmp_path / "d", progress=False)
    assert len(served) == 1
    assert "adaptive-vectors (flagger oracle:1.0 (EMULATED flagger: measurement only))" in (tmp_path / "d" / "report.html").read_text()


def test_an_adaptive_arm_at_the_default_flagger_gets_the_harmless_pairs_it_needs():
    from unlearnable.experiments.demo import DemoConfig
    from unlearnable.experiments.setup import DEFENSE_HARMLESS

    assert DemoConfig(defense="adaptive-vectors").defense_harmless() == DEFENSE_HARMLESS  # vector-gain's threshold
    assert DemoConfig(defense="adaptive-vectors", defense_options={"flagger": "refusal"}).defense_harmless() == 0
    assert DemoConfig().defense_harmless() == 0


@pytest.mark.parametrize("defense", ["early-stopped-vectors", "adaptive-vectors"])
def test_the_vectors_pick_reaches_an_early_stopped_arm(defense):
    from unlearnable.experiments.demo import DemoConfig

    cfg = from_dict(DemoConfig, {"defense": defense, "vectors": {"holdout": 0.2, "holdout_pick": "latest-within-1se"}})
    built = DEFENSES.get(defense).from_options(cfg.options_of(defense))
    assert built.vector_config().holdout_pick == "latest-within-1se"


def test_the_tradeoff_refuses_a_demo_defence_in_its_base():
    from unlearnable.experiments.tradeoff import TradeoffConfig

    with pytest.raises(UnlearnableError, match="base.defense"):
        from_dict(TradeoffConfig, {"base": {"defense": "adaptive-vectors"}})


@pytest.mark.parametrize("options,match", [
    ({"defense": "lisa"}, "runs one of security-vectors, early-stopped-vectors, adaptive-vectors, not 'lisa'"),
    ({"defense": "adaptive-vectors", "defense_options": {"flager": "refusal"}}, "defense_options.adaptive-vectors.flager"),
    ({"defense": "adaptive-vectors", "defense_options": {"training": {"lr": 1.0}}}, "sets it from vectors"),
    ({"defense": "adaptive-vectors", "defense_options": {"epochs": 2}}, "defense_options.epochs"),
    ({"defense": "early-stopped-vectors", "defense_options": {"pick": "lowest"}}, "defense_options.pick"),
    ({"defense": "adaptive-vectors", "defense_options": {"flagger": "nope"}}, "unknown flagger 'nope'"),
])
def test_a_defence_without_vectors_or_a_bad_option_is_one_line_before_any_model_loads(options, match):
    with pytest.raises(UnlearnableError, match=match) as err:
        from_dict(DemoConfig, options)
    assert "\n" not in str(err.value)
