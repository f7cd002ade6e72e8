"""Every registered plugin, generated from the registries: a new defence, attack, flagger or benchmark is tested the
moment it is registered. Each defence runs prepare -> harden -> finetune -> serving on the tiny model; each attack
makes its training pairs, for every value the search may sample; each flagger flags; a bad option of any of them
ends in the one error users see."""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import pytest
import torch

from unlearnable.attacks import ATTACKS, AttackData, build_attack
from unlearnable.data import Pair, profileqa
from unlearnable.defenses import DEFENSES, Defense, DefenseData, prepared
from unlearnable.errors import UnlearnableError
from unlearnable.flaggers import FLAGGERS, build_flagger
from unlearnable.generation import generate
from unlearnable.judges import JUDGES, build_judge, check_judge_options
from unlearnable.training import TrainConfig
from unlearnable.utility import BENCHMARKS
from unlearnable.vectors import VectorConfig

#: what makes each run a few steps on the tiny model, where a defence's Config has the field
SMALL = {"max_steps": 2, "batch_size": 4, "epochs": 1.0, "training": VectorConfig(epochs=1, batch_size=8),
         "estimate": TrainConfig(max_steps=2, batch_size=4), "reinforce_steps": 2, "every": 1, "refit_steps": 1}


def small_options(name: str) -> dict:
    fields = DEFENSES.get(name).option_names()
    return {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in SMALL.items() if k in fields}


def own_data(harmful_pairs, model) -> DefenseData:
    return DefenseData(harmful=[dataclasses.replace(p, harmful=True) for p in harmful_pairs[:8]],
                       refusals=[Pair(p.prompt, "I'm sorry, I can't help with that.") for p in harmful_pairs[:8]],
                       harmless=[Pair(f"Write a poem number {i}.", "Leaves fall softly on the path.")
                                 for i in range(8)],
                       unaligned=lambda: copy.deepcopy(model))


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defence_prepares_hardens_fine_tunes_and_serves(tiny, harmful_pairs, name):
    model, tok = tiny
    data = own_data(harmful_pairs, model)
    defense = prepared(name, small_options(name), model, tok, data, progress=False)
    released = defense.harden(copy.deepcopy(model), tok, data, progress=False) if defense.hardens() else model
    user = profileqa(1, 0) + harmful_pairs[8:12]
    tuned, _ = defense.finetune(copy.deepcopy(released), tok, user, TrainConfig(max_steps=2, batch_size=4),
                                progress=False)
    with defense.serving(tuned):
        answers = generate(tuned, tok, ["What is the job of Ann Lee?"], max_new_tokens=4, progress=False)
    assert len(answers) == 1
    described = defense.describe()
    assert described["name"] == name and described["threat_models"]


@pytest.mark.parametrize("name", [n for n in DEFENSES.names() if DEFENSES.get(n).harden is not Defense.harden])
def test_every_hardening_defence_hardens_a_copy(tiny, harmful_pairs, name):
    """The harness hands a defence the model it keeps serving (no copy of its own): the defence copies."""
    model, tok = tiny
    data = own_data(harmful_pairs, model)
    defense = prepared(name, small_options(name), model, tok, data, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hardened = defense.harden(model, tok, data, progress=False)
    assert hardened is not model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_prepared_defence_is_saved_and_the_next_run_loads_it_under_the_lock(tiny, harmful_pairs, tmp_path):
    model, tok = tiny
    data, locked = own_data(harmful_pairs, model), []

    def lock(folder):
        locked.append(folder)
        return contextlib.nullcontext()

    options = small_options("security-vectors")
    first = prepared("security-vectors", options, model, tok, data, folder=tmp_path / "sv", lock=lock,
                     progress=False)
    trained = {k: v.clone() for k, v in first.vectors.state.items()}
    again = prepared("security-vectors", options, model, tok, DefenseData(), folder=tmp_path / "sv", lock=lock,
                     progress=False)  # no harmful data: it could not train, so it must have loaded
    assert locked == [tmp_path / "sv"] * 2
    loaded = again.vectors.state
    assert trained.keys() == loaded.keys() and all(torch.equal(trained[k], loaded[k]) for k in trained)


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defences_bad_option_is_one_line(name):
    with pytest.raises(UnlearnableError, match=f"defense_options.{name}"):
        DEFENSES.get(name).from_options({"no_such_option": 1})


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_makes_its_training_pairs(harmful_pairs, name):
    harmless = [Pair(f"Write a poem number {i}.", "Leaves fall softly on the path.") for i in range(12)]
    attack = build_attack(name)
    pairs = attack.training_pairs(AttackData(harmful=harmful_pairs[:12], harmless=harmless), 8, 0)
    assert len(pairs) >= 8 and all(p.prompt and p.response for p in pairs)  # mixed: n harmful among others
    with pytest.raises(UnlearnableError, match="attack_options"):
        build_attack(name, {"no_such_option": 1})


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_value_the_search_may_sample_makes_pairs(harmful_pairs, name):
    harmless = [Pair(f"Write a poem number {i}.", "Leaves fall softly on the path.") for i in range(40)]
    data = AttackData(harmful=harmful_pairs[:12], harmless=harmless)
    for option, values in ATTACKS.get(name).search_options.items():
        for value in values:
            pairs = build_attack(name, {option: value}).training_pairs(data, 4, 0)
            assert len(pairs) >= 4 and all(p.prompt and p.response for p in pairs), (option, value)


@pytest.mark.parametrize("name", BENCHMARKS.names())
def test_every_benchmarks_bad_option_is_one_line(name):
    with pytest.raises(UnlearnableError, match=f"benchmarks.{name}") as err:
        BENCHMARKS.get(name).from_options({"no_such_option": 1})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", BENCHMARKS.names())
def test_every_benchmark_scores_the_tiny_model_and_holds_out_other_items(tiny, name):
    model, tok = tiny
    cls = BENCHMARKS.get(name)
    small = {k: v for k, v in {"n": 4, "max_length": 64}.items() if k in cls.option_names()}
    bench = cls.from_options(small)
    scored = bench.run(model, tok, progress=False)
    assert 0.0 <= scored["accuracy"] <= 1.0 and scored["n"] == small.get("n", scored["n"])
    other = bench.held_out(2, seed=1)
    if other is not None and hasattr(bench, "questions"):  # the tuning's items: none of the evaluation's
        assert not {q["question"] for q in other.questions()} & {q["question"] for q in bench.questions()}


@pytest.mark.parametrize("name", FLAGGERS.names())
def test_every_flagger_flags_and_rejects_a_bad_argument(tiny, harmful_pairs, name):
    model, tok = tiny
    # a combination names what it combines, a wrapper what it wraps
    spec = {"any": "any:refusal+oracle:0.5", "normalized": "normalized:refusal"}.get(name, name)
    flagger = build_flagger(spec).bind(model, tok, progress=False)
    if flagger.private:  # it reads what the defence holds: its vectors, and harmless pairs to calibrate on
        from unlearnable.vectors import SecurityVectors, VectorConfig

        vectors = SecurityVectors.train(model, tok, harmful_pairs[4:8], VectorConfig(epochs=1, batch_size=4),
                                        progress=False)
        flagger.defended_by(vectors, [Pair(f"Poem {i}?", "Leaves fall softly.") for i in range(4)])
    flags = flagger.flag(harmful_pairs[:4])
    assert len(flags) == 4 and all(isinstance(f, bool) for f in flags)
    with pytest.raises(UnlearnableError):
        build_flagger(f"{name}:not-an-argument")


@pytest.mark.parametrize("name", JUDGES.names())
def test_every_judges_settings_are_its_config_and_a_bad_one_is_one_line(name):
    with pytest.raises(UnlearnableError, match=f"judge_options.{name}.no_such_setting"):
        check_judge_options({name: {"no_such_setting": 1}})
    check_judge_options({name: {}})  # its defaults are valid settings


@pytest.mark.parametrize("name", JUDGES.names())
def test_every_judges_config_is_what_its_constructor_takes(name):
    """Each setting a config file may give is a constructor argument, with the constructor's default."""
    import inspect

    cls = JUDGES.get(name)
    params = inspect.signature(cls.__init__).parameters
    for f in dataclasses.fields(cls.Config):
        assert f.name in params and params[f.name].default == f.default, f"{name}.{f.name}"
    with pytest.raises(UnlearnableError) as err:
        check_judge_options({name: {"no_such_setting": 1}})
    assert "\n" not in str(err.value)


def test_a_judges_settings_reach_it_from_a_job_config():
    judge = build_judge("harmful-loss:2.0", {"harmful-loss": {"first_tokens": 3}})
    assert (judge.threshold, judge.first_tokens) == (2.0, 3)
    assert judge.describe() == {"name": "harmful-loss", "options": {"first_tokens": 3}}
    assert build_judge("harmful-loss").first_tokens == 8  # the default without settings
    with pytest.raises(UnlearnableError, match="judge_options.harmbench.dtype: 'fp8' is not one of"):
        check_judge_options({"harmbench": {"dtype": "fp8"}})
    with pytest.raises(UnlearnableError, match="judge_options.classifier.batch_size must be at least 1"):
        check_judge_options({"classifier": {"batch_size": 0}})
