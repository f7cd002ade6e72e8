"""One config system: defaults < --config file < explicit flags, flags generated from the dataclasses, old key
names kept as aliases."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from unlearnable.adapters import LoraSpec
from unlearnable.config import add_config_flags, build_config, from_dict, given_flags
from unlearnable.errors import UnlearnableError
from unlearnable.training import TrainConfig


def _parse(cls, argv, aliases=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=None)
    add_config_flags(parser, cls, aliases=aliases)
    return parser.parse_args(argv)


def _build(cls, argv, tmp_path=None, file=None, aliases=None, preset=None):
    args = _parse(cls, argv, aliases)
    path = None
    if file is not None:
        path = tmp_path / "cfg.json"
        path.write_text(json.dumps(file), encoding="utf-8")
    return build_config(cls, preset=preset, file=path, overrides=given_flags(args, cls))


def test_defaults_then_file_then_flags(tmp_path):
    from unlearnable.experiments import DemoConfig

    assert _build(DemoConfig, []).seed == 0
    cfg = _build(DemoConfig, [], tmp_path, file={"seed": 3, "finetune": {"lr": 5e-4, "epochs": 1.0}})
    assert (cfg.seed, cfg.finetune.lr, cfg.finetune.epochs) == (3, 5e-4, 1.0)
    cfg = _build(DemoConfig, ["--seed", "0", "--finetune.lr", "1e-4"], tmp_path,
                 file={"seed": 3, "finetune": {"lr": 5e-4, "epochs": 1.0}})
    assert cfg.seed == 0, "an explicit --seed 0 must win over the file's seed"
    assert (cfg.finetune.lr, cfg.finetune.epochs) == (1e-4, 1.0)  # the file's other keys stay
    # an unset flag leaves the default of a nested config intact, not the field's class default
    assert cfg.vectors.lr == DemoConfig().vectors.lr == 2e-3


def test_aliases_and_lists_and_booleans(tmp_path):
    from unlearnable.experiments import DemoConfig, ImmunizeConfig, TradeoffConfig

    cfg = _build(DemoConfig, ["--vector-scale", "0.5", "--align", "false"], aliases={"--vector-scale": "vectors.scale"})
    assert cfg.vectors.scale == 0.5 and cfg.align is False
    imm = _build(ImmunizeConfig, ["--defenses", "none,security-vectors", "--budget.lrs", "1e-3,3e-3,1e-2"])
    assert imm.defenses == ["none", "security-vectors"] and imm.budget.lrs == [1e-3, 3e-3, 1e-2]
    quick = _build(TradeoffConfig, ["--seed", "4"], aliases={"--seed": "seeds"}, preset=TradeoffConfig.quick())
    assert quick.seeds == [4] and quick.strengths == TradeoffConfig.quick().strengths  # preset < flags


def test_bad_flag_values_are_argparse_errors():
    from unlearnable.experiments import ImmunizeConfig

    with pytest.raises(SystemExit):
        _parse(ImmunizeConfig, ["--threshold", "high"])
    with pytest.raises(SystemExit):
        _parse(ImmunizeConfig, ["--align", "maybe"])


def test_checks_run_on_the_merged_config(tmp_path):
    from unlearnable.experiments import ImmunizeConfig

    with pytest.raises(UnlearnableError, match="threshold"):
        _build(ImmunizeConfig, ["--threshold", "2"])
    with pytest.raises(UnlearnableError, match="unknown config key 'sed'"):
        _build(ImmunizeConfig, [], tmp_path, file={"sed": 1})


def test_one_lora_spec_and_the_old_flat_keys():
    old = from_dict(TrainConfig, {"lora_r": 8, "lora_alpha": 16, "lora_top_layers": 0.5, "target_modules": "q_proj"})
    assert old.lora == LoraSpec(r=8, alpha=16, target_modules="q_proj", top_layers=0.5)
    from unlearnable.vectors import VectorConfig

    v = from_dict(VectorConfig, {"r": 4, "alpha": 8, "scale": 0.5})  # as vectors saved by earlier versions record
    assert (v.lora.r, v.lora.alpha, v.scale) == (4, 8, 0.5)
    assert from_dict(VectorConfig, dataclasses.asdict(v)) == v  # and the new shape round-trips
    with pytest.raises(UnlearnableError, match="old name"):
        from_dict(TrainConfig, {"lora_r": 8, "lora": {"r": 4}})


def test_nested_seeds_have_no_flag_the_top_seed_propagates():
    from unlearnable.experiments import DemoConfig

    with pytest.raises(SystemExit):
        _parse(DemoConfig, ["--finetune.seed", "3"])
    cfg = _build(DemoConfig, ["--seed", "3"]).seeded()
    assert cfg.finetune.seed == cfg.vectors.seed == cfg.data.seed == cfg.align_train.seed == 3


def test_every_cli_flag_of_earlier_versions_still_parses():
    from unlearnable.cli import make_parser

    cases = {
        "demo": ["demo", "--out", "o", "--seed", "1", "--vector-scale", "1.0", "--config", "c.yaml", "--overwrite",
                 "--quiet"],
        "vectors": ["vectors", "train", "--out", "v", "--data", "d", "--epochs", "2", "--lr", "1e-3", "--rank", "8",
                    "--alpha", "16", "--target-loss", "0.1", "--vector-scale", "0.5", "--checkpoint-every", "5"],
        "finetune": ["finetune", "--out", "t", "--data", "d", "--vectors", "v", "--backbone", "full", "--epochs",
                     "1", "--lr", "1e-4", "--batch-size", "4", "--max-length", "32", "--vector-scale", "0.5"],
        "evaluate": ["evaluate", "--model", "m", "--data", "d", "--harmful", "h", "--judge", "keyword", "--out", "e"],
        "immunize": ["immunize", "--defenses", "none", "--judges", "keyword", "--threshold", "0.4", "--seed", "0"],
        "tradeoff": ["tradeoff", "--quick", "--seeds", "0,1", "--strengths", "0.5", "--variants", "plain",
                     "--reuse-points", "a,b", "--goal-harm", "0.1", "--goal-task-ratio", "0.9", "--model", "m"],
    }
    for command, argv in cases.items():
        args = make_parser(command).parse_args(argv)
        assert callable(args.func)


def test_whole_numbers_for_float_fields_hash_alike():
    """A cache key hashes the config: ``epochs=3`` (a Python default) and ``3.0`` (from a config file) are the same
    training and must give one key, or the aligned-model cache misses between demo and tradeoff."""
    from unlearnable.utils import sha256_json
    from unlearnable.vectors import VectorConfig

    a, b = TrainConfig(lr=1e-3, epochs=3), from_dict(TrainConfig, {"lr": 0.001, "epochs": 3.0})
    assert isinstance(a.epochs, float) and a == b
    assert sha256_json(dataclasses.asdict(a)) == sha256_json(dataclasses.asdict(b))
    assert isinstance(VectorConfig(scale=1).scale, float)
    assert TrainConfig(max_steps=4).max_steps == 4 and isinstance(TrainConfig(max_steps=4).max_steps, int)


def test_a_nested_config_given_in_part_keeps_its_parents_defaults_for_the_rest(tmp_path):
    """Defaults < file < flags holds inside nested configs too: one flag or file key under ``vectors`` changes that
    key only; the other keys keep the parent's default (the demo's recommended vectors, immunize's target loss),
    not the nested class's own defaults."""
    from unlearnable.experiments import ImmunizeConfig, VectorsTrainJob
    from unlearnable.experiments.demo import DemoConfig
    from unlearnable.vectors import recommended

    demo = _build(DemoConfig, ["--vectors.scale", "0.75"])
    assert demo.vectors == dataclasses.replace(recommended(), scale=0.75)
    job = _build(VectorsTrainJob, ["--vectors.lora.r", "4"], tmp_path, file={"vectors": {"epochs": 2}})
    assert (job.vectors.holdout, job.vectors.lr, job.vectors.epochs, job.vectors.lora.r) == (0.2, 2e-3, 2, 4)
    imm = _build(ImmunizeConfig, ["--vectors.lr", "1e-4", "--data.n-harmless", "80"])
    assert (imm.vectors.lr, imm.vectors.target_loss, imm.data.n_harmless, imm.data.vector_pool) == (1e-4, 0.15, 80, 150)
    old = _build(VectorsTrainJob, [], tmp_path, file={"vectors": {"r": 8}})  # an old flat key, still accepted
    assert old.vectors.lora.r == 8 and old.vectors.holdout == 0.2


def test_vectors_train_and_finetune_default_to_the_recommended_vectors():
    from unlearnable.experiments import FinetuneJob, VectorsTrainJob
    from unlearnable.vectors import recommended

    assert VectorsTrainJob().vectors == recommended()
    assert FinetuneJob().vector_scale is None  # finetune --vectors uses the strength recorded with them


def test_the_demo_trains_the_recommended_vectors_and_the_tradeoff_starts_from_plain_ones():
    from unlearnable.experiments.demo import DemoConfig
    from unlearnable.experiments.tradeoff import TradeoffConfig
    from unlearnable.vectors import RECOMMENDED_SCALE, recommended

    assert DemoConfig().vectors == recommended()
    assert recommended().holdout > 0 and recommended().target_loss == 0 and recommended().scale == RECOMMENDED_SCALE
    plain = TradeoffConfig().base.vectors  # the variants' common start: measured points stay reusable
    assert (plain.holdout, plain.target_loss, plain.epochs, plain.lr) == (0.0, 0.15, 4, 2e-3)
    assert TradeoffConfig().base.finetune == DemoConfig().finetune


def test_a_training_key_that_moved_to_its_component_says_where_it_went():
    from unlearnable.experiments.demo import DemoConfig

    with pytest.raises(UnlearnableError, match=r"'finetune.kl_weight' has moved: set the vectors' benign_weight"):
        from_dict(DemoConfig, {"finetune": {"kl_weight": 2.0}}, "")
    with pytest.raises(UnlearnableError, match=r"'ascent_cap' has moved: .*adversarial-loss.cap"):
        from_dict(TrainConfig, {"ascent_cap": 3.0}, "")
    assert not {"kl_weight", "ascent_cap"} & {f.name for f in dataclasses.fields(TrainConfig)}


def test_the_weighted_and_kl_losses_take_their_knobs_from_the_caller(tiny, harmful_pairs, monkeypatch):
    from unlearnable import training

    seen = []
    real = training.UnlearnableTrainer.train
    monkeypatch.setattr(training.UnlearnableTrainer, "train",
                        lambda self, **kw: (seen.append((self.ascent_cap, self.kl_weight)), real(self, **kw))[1])
    model, tok = tiny
    training.finetune(model, tok, harmful_pairs[:4], TrainConfig(max_steps=1, batch_size=4), weights=[1.0, -1.0, 1.0, -1.0],
             ascent_cap=2.5, progress=False)
    assert seen == [(2.5, 1.0)]


def test_a_moved_key_given_as_a_flag_says_where_it_went():
    from unlearnable.experiments.demo import DemoConfig

    parser = argparse.ArgumentParser()
    add_config_flags(parser, DemoConfig)
    args = parser.parse_args(["--finetune.kl-weight", "2"])
    with pytest.raises(UnlearnableError, match="'finetune.kl_weight' has moved"):
        build_config(DemoConfig, overrides=given_flags(args, DemoConfig))
    assert "kl-weight" not in parser.format_help()  # accepted, not advertised


def test_empty_judge_options_leave_keys_as_they_were_and_set_ones_change_them():
    """A sweep or run keyed before judge settings existed still resumes; a judge setting that changes verdicts
    changes the key."""
    from unlearnable.experiments import ImmunizeConfig
    from unlearnable.training import keyed

    plain = keyed(dataclasses.asdict(ImmunizeConfig()))
    assert "judge_options" not in plain
    judged = keyed(dataclasses.asdict(ImmunizeConfig(judge_options={"harmful-loss": {"first_tokens": 4}})))
    assert judged["judge_options"] == {"harmful-loss": {"first_tokens": 4}}
