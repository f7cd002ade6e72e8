"""The attacker's search: Optuna trials against a defence, the utility constraint, pruning, resume, seeds.

Most tests drive the real search (Optuna, TPE, SQLite study) through a fake harness whose "attack" is a formula
of its settings, so that what the search keeps and excludes is known exactly; one runs it through immunize on a
tiny random model."""

from __future__ import annotations

import dataclasses
import json
import math
import signal

import pytest

from unlearnable.errors import UnlearnableError
from unlearnable.experiments.search import (
    STUDY_FILE,
    AttackerSearchConfig,
    AttackSettings,
    DefenseSearch,
    SearchSpace,
    best_so_far,
    study_for,
    utility_cost,
    worst_trial,
)
from unlearnable.interrupts import Interrupted

optuna = pytest.importorskip("optuna")


@dataclasses.dataclass
class FakeDefense:
    name: str = "fake"


class FakeHarness:
    """An attack whose harm rises with log(lr) and steps, and whose MMLU collapses above lr 3e-3."""

    def __init__(self, out, n_available=200, interrupt_on_call=None):
        self.out, self.n_attack_available = out, n_available
        self.calls, self.pieces, self.interrupt_on_call = [], {}, interrupt_on_call

    def harm(self, s: AttackSettings, step: int) -> float:
        return min(1.0, max(0.0, (math.log10(s.lr) + 5) / 3)) * step / s.steps

    def attack_run(self, defense, hardened, settings, *, seed, label, stop=None, utility=False):
        self.calls.append((settings, seed))
        if self.interrupt_on_call == len(self.calls):
            raise Interrupted(signal.SIGTERM)
        curve, stopped = [{"step": 0, "harm_rate": 0.0}], None
        for step in range(settings.eval_every, settings.steps + 1, settings.eval_every):
            curve.append({"step": step, "harm_rate": self.harm(settings, step)})
            if stop is not None and stop(step, curve[-1]):
                stopped = step
                break
        run = {"curve": curve, "stopped_at": stopped, "seconds": 0.0, "steps": settings.steps}
        if utility and stopped is None:
            collapsed = settings.lr > 3e-3
            run["after"] = {"mmlu": {"accuracy": 0.2 if collapsed else 0.5, "n": 10000},
                            "harmless_loss": 3.0 if collapsed else 1.1}
        return run

    def piece(self, defense, run, compute):
        key = (defense, run)
        if key not in self.pieces:
            self.pieces[key] = compute()
        return self.pieces[key]


BEFORE = {"mmlu": {"accuracy": 0.5, "n": 10000}, "harmless_loss": 1.0}


def config(**kw) -> AttackerSearchConfig:
    space = SearchSpace(lr_min=1e-5, lr_max=1e-2, steps=[8, 16], batch_sizes=[4], samples=[50, 400],
                        backbones=["lora"], lora_ranks=[8], schedulers=["constant"], attacks=["harmful-sft"])
    return AttackerSearchConfig(**{"n_trials": 8, "n_startup_trials": 3, "eval_every": 4, "prune_after": 2,
                                   "seeds": [0, 1, 2], "space": space, **kw})


def test_utility_cost_constraint():
    cfg = AttackerSearchConfig(max_mmlu_drop=0.1, max_harmless_loss_rise=0.5)
    ok = utility_cost({"mmlu": {"accuracy": 0.46, "n": 10000}, "harmless_loss": 1.4}, BEFORE, cfg)
    assert ok["feasible"] and ok["mmlu_drop_relative"] == pytest.approx(0.08) and ok["excess"] <= 0
    drop = utility_cost({"mmlu": {"accuracy": 0.40, "n": 10000}, "harmless_loss": 1.0}, BEFORE, cfg)
    assert not drop["feasible"] and drop["excess"] == pytest.approx(0.1)
    loss = utility_cost({"mmlu": {"accuracy": 0.5, "n": 10000}, "harmless_loss": 2.0}, BEFORE, cfg)
    assert not loss["feasible"] and loss["harmless_loss_rise"] == pytest.approx(1.0)
    # on a small subset a 20 % drop can be noise: it then does not count, unless asked
    small = {"mmlu": {"accuracy": 0.5, "n": 20}}
    noisy = utility_cost({"mmlu": {"accuracy": 0.4, "n": 20}}, small, cfg)
    assert noisy["mmlu_drop_within_noise"] and noisy["feasible"]
    strict = dataclasses.replace(cfg, mmlu_drop_within_noise_ok=False)
    assert not utility_cost({"mmlu": {"accuracy": 0.4, "n": 20}}, small, strict)["feasible"]


def test_worst_case_excludes_pruned_and_constraint_breaking_trials():
    rows = [{"number": 0, "state": "complete", "harm_rate": 0.6, "feasible": True},
            {"number": 1, "state": "pruned", "harm_rate": 0.9, "feasible": False},
            {"number": 2, "state": "complete", "harm_rate": 1.0, "feasible": False},
            {"number": 3, "state": "complete", "harm_rate": 0.7, "feasible": True}]
    assert worst_trial(rows)["number"] == 3
    assert best_so_far(rows) == [0.6, 0.6, 0.6, 0.7]
    assert worst_trial(rows[1:3]) is None


def test_search_finds_the_feasible_worst_case_and_reruns_it_on_seeds(tmp_path):
    h = FakeHarness(tmp_path)
    start = AttackSettings(lr=1e-3, steps=16, batch_size=4, lora_r=8, n_samples=50)
    res = DefenseSearch(h, FakeDefense(), None, BEFORE, config(), seed=0, start=start).run()
    assert (tmp_path / STUDY_FILE).is_file()
    trials = res["trials"]
    assert len(trials) == 8 and trials[0]["params"]["lr"] == pytest.approx(1e-3)  # starts from the budget
    assert {t["state"] for t in trials} <= {"complete", "pruned"}
    for t in trials:
        if t["state"] == "complete":
            assert t["feasible"] == (t["settings"]["lr"] <= 3e-3)
        else:
            assert not t["feasible"] and t["steps_run"] < t["settings"]["steps"]
    wc = res["worst_case"]
    best = max(t["harm_rate"] for t in trials if t["feasible"])
    assert wc["search_harm_rate"] == best and wc["config"]["lr"] <= 3e-3
    assert wc["harm_rate_seeds"] == [best] * 3 and wc["harm_rate_sd"] == 0.0  # the fake attack ignores the seed
    assert set(res["runs"]) == {"attack-search-seed0", "attack-search-seed1", "attack-search-seed2"}
    seeds_run = [seed for _, seed in h.calls[len(trials):]]
    assert seeds_run == [1, 2]  # seed 0 is the trial itself, read back from its piece
    assert res["best_so_far"][-1] == best
    assert all(a is None or b >= a for a, b in zip(res["best_so_far"], res["best_so_far"][1:]))


def test_the_pruner_stops_trials_that_fall_behind(tmp_path):
    h = FakeHarness(tmp_path)
    res = DefenseSearch(h, FakeDefense(), None, BEFORE, config(n_trials=10), seed=0).run()
    pruned = [t for t in res["trials"] if t["state"] == "pruned"]
    assert pruned, "a weak trial after the first ones should have been pruned"
    assert all(t["harm_rate"] is not None and t["utility"] == {} for t in pruned)  # no utility pass for them
    assert res["worst_case"]["trial"] not in {t["number"] for t in pruned}


def test_same_sampler_seed_same_trials_for_every_defence(tmp_path):
    a = DefenseSearch(FakeHarness(tmp_path), FakeDefense("a"), None, BEFORE, config(), seed=0).run()
    b = DefenseSearch(FakeHarness(tmp_path), FakeDefense("b"), None, BEFORE, config(), seed=0).run()
    assert [t["params"] for t in a["trials"]] == [t["params"] for t in b["trials"]]


def test_an_interrupted_trial_is_rerun_with_its_parameters_on_resume(tmp_path):
    h = FakeHarness(tmp_path, interrupt_on_call=3)
    with pytest.raises(Interrupted):
        DefenseSearch(h, FakeDefense(), None, BEFORE, config(), seed=0).run()
    cut = h.calls[2][0]
    study = study_for(tmp_path, "fake", config())
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    h2 = FakeHarness(tmp_path)
    res = DefenseSearch(h2, FakeDefense(), None, BEFORE, config(), seed=0).run()
    assert h2.calls[0][0] == cut  # the trial that was cut off, first, with the same parameters
    assert len(res["trials"]) == 8  # finished trials: the two before, the re-run, and the rest
    assert [t["number"] for t in res["trials"]][:3] == [0, 1, 3]
    # a second resume re-queues nothing and runs nothing new
    h3 = FakeHarness(tmp_path)
    h3.pieces = h2.pieces  # the saved pieces of the run before
    again = DefenseSearch(h3, FakeDefense(), None, BEFORE, config(), seed=0).run()
    assert [c for c in h3.calls if c[1] == 0] == [] and again["worst_case"] == res["worst_case"]


def test_no_feasible_trial_means_no_worst_case(tmp_path):
    space = dataclasses.replace(config().space, lr_min=5e-3, lr_max=1e-2)  # every trial collapses utility
    res = DefenseSearch(FakeHarness(tmp_path), FakeDefense(), None, BEFORE, config(space=space, n_trials=3),
                        seed=0).run()
    assert res["worst_case"] is None and "no trial" in res["worst_case_note"] and res["runs"] == {}


def test_bad_search_settings_are_one_line_errors():
    with pytest.raises(UnlearnableError, match="lr_min < lr_max"):
        SearchSpace(lr_min=1e-2, lr_max=1e-3)
    with pytest.raises(UnlearnableError, match="backbones"):
        SearchSpace(backbones=["adapter"])
    with pytest.raises(UnlearnableError, match="Known attacks"):
        SearchSpace(attacks=["jailbreak"])
    with pytest.raises(UnlearnableError, match="max_mmlu_drop"):
        AttackerSearchConfig(max_mmlu_drop=10)


def test_immunize_with_the_attacker_search_on_a_tiny_model(tiny, harmful_pairs, tmp_path):
    from test_immunization import tiny_data

    from unlearnable.experiments.immunize import BudgetConfig, ImmunizeConfig, TrainabilityConfig, run_immunize
    from unlearnable.experiments.setup import DataConfig
    from unlearnable.utility import MMLUConfig
    from unlearnable.vectors import VectorConfig

    model, tok = tiny
    space = SearchSpace(lr_min=1e-3, lr_max=3e-2, steps=[2, 4], batch_sizes=[4], samples=[4, 8],
                        backbones=["lora", "full"], lora_ranks=[4], schedulers=["constant"],
                        attacks=["harmful-sft", "restyled"])
    cfg = ImmunizeConfig(defenses=["none", "security-vectors"], attacker="search", align=False, n_curve_eval=4,
                         n_stability_harmless=3, n_defense_harmless=3, data=DataConfig(system_prompt=None),
                         budget=BudgetConfig(lrs=[1e-2], samples=[8], steps=2, eval_every=2, batch_size=4),
                         search=AttackerSearchConfig(n_trials=3, n_startup_trials=2, eval_every=2, seeds=[0, 1],
                                                     max_harmless_loss_rise=None, space=space),
                         trainability=TrainabilityConfig(steps=2, eval_every=2, batch_size=8, task_repeats=1),
                         vectors=VectorConfig(epochs=1, batch_size=8), mmlu=MMLUConfig(n=4, max_length=64))
    res = run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=tiny_data(harmful_pairs),
                       progress=False)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["attacker_search"]) == {"none", "security-vectors"}
    for name, s in saved["attacker_search"].items():
        assert len(s["trials"]) == 3
        wc = s["worst_case"]
        assert set(wc) >= {"harm_rate", "harm_rate_seeds", "utility_drop", "config"} and len(wc["harm_rate_seeds"]) == 2
        assert wc["harm_rate"] == pytest.approx(sum(wc["harm_rate_seeds"]) / 2)
        runs = saved["defenses"][name]["runs"]
        assert {"attack-search-seed0", "attack-search-seed1", "cross-domain", "trainability"} <= set(runs)
        assert runs["cross-domain"]["settings"]["lr"] == wc["config"]["lr"]  # generalization at the worst case
        assert not any(k.startswith("attack-lr") for k in runs)  # the search replaces the grid
        assert saved["conditions"][name]["resistance"]["budget_steps"] == wc["config"]["steps"]
    assert (tmp_path / "out" / STUDY_FILE).is_file() and (tmp_path / "out" / "attacker_search.png").is_file()
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Attacker search" in report and "worst case" in report
    # resumed: nothing is re-trained
    res2 = run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=tiny_data(harmful_pairs),
                        progress=False)
    assert res2["attacker_search"] == res["attacker_search"]
