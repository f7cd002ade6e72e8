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

from unlearnable.attacks import AttackSettings
from unlearnable.errors import UnlearnableError
from unlearnable.experiments.search import (
    STUDY_FILE,
    AttackerSearchConfig,
    DefenseSearch,
    Target,
    best_so_far,
    by_dimension,
    study_for,
    study_name,
    utility_cost,
    worst_trial,
)
from unlearnable.experiments.studies import DIVERGED
from unlearnable.interrupts import Interrupted
from unlearnable.threat_models import SERVICE, WEIGHTS, SearchSpace, ServiceConfig, build_threat_model

optuna = pytest.importorskip("optuna")


class FakeHarness:
    """An attack whose harm rises with log(lr) and steps, and whose MMLU collapses above lr 3e-3."""

    def __init__(self, out, n_available=200, interrupt_on_call=None):
        self.out, self.n_attack_available = out, n_available
        self.calls, self.pieces, self.interrupt_on_call = [], {}, interrupt_on_call

    def harm(self, s: AttackSettings, step: int) -> float:
        return min(1.0, max(0.0, (math.log10(s.lr) + 5) / 3)) * step / s.steps

    def target(self, name="fake") -> Target:
        return Target(name, run=self.attack_run, piece=lambda run, compute, **kw: self.piece(name, run, compute, **kw),
                      n_available=self.n_attack_available, out=self.out)

    def attack_run(self, settings, *, seed, label, stop=None, utility=False):
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

    def piece(self, defense, run, compute, current=lambda _run: True):
        key = (defense, run)
        if key not in self.pieces or not current(self.pieces[key]):
            self.pieces[key] = compute()
        return self.pieces[key]


BEFORE = {"mmlu": {"accuracy": 0.5, "n": 10000}, "harmless_loss": 1.0}


def config(**kw) -> AttackerSearchConfig:
    space = SearchSpace(lr_min=1e-5, lr_max=1e-2, steps=[8, 16], batch_sizes=[4], samples=[50, 400],
                        backbones=["lora"], lora_ranks=[8], schedulers=["constant"], attacks=["harmful-sft"])
    return AttackerSearchConfig(**{"n_trials": 8, "n_startup_trials": 3, "eval_every": 4, "prune_after": 2,
                                   "seeds": [0, 1, 2], "space": space, **kw})


def weights(cfg: AttackerSearchConfig | None = None):
    return build_threat_model("weights", (cfg or config()).space)


def search(h, cfg=None, name="fake", tm=None, start=None) -> DefenseSearch:
    cfg = cfg or config()
    return DefenseSearch(h.target(name), BEFORE, cfg, tm or weights(cfg), seed=0, start=start)


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
    # a model that answers one letter everywhere is recorded as such (the trial's MMLU then measures nothing)
    one_letter = utility_cost({"mmlu": {"accuracy": 0.46, "n": 10000, "constant_answer": "A"}}, BEFORE, cfg)
    assert one_letter["mmlu_constant_answer"] == "A" and ok["mmlu_constant_answer"] is None


def test_over_refusal_after_the_attack_breaks_the_constraint_only_when_bounded():
    before = {**BEFORE, "over_refusal": 0.0}
    refusing = {"mmlu": {"accuracy": 0.5, "n": 10000}, "harmless_loss": 1.0, "over_refusal": 1.0}
    unbounded = utility_cost(refusing, before, AttackerSearchConfig())
    assert unbounded["feasible"] and unbounded["over_refusal_rise"] == 1.0  # scored, not a constraint
    bounded = utility_cost(refusing, before, AttackerSearchConfig(max_over_refusal_rise=0.2))
    assert not bounded["feasible"] and bounded["excess"] == pytest.approx(0.8)
    mild = utility_cost({**refusing, "over_refusal": 0.1}, before, AttackerSearchConfig(max_over_refusal_rise=0.2))
    assert mild["feasible"]
    with pytest.raises(UnlearnableError, match="n_stability_harmless is 0"):
        from unlearnable.experiments.immunize import ImmunizeConfig

        ImmunizeConfig(search=AttackerSearchConfig(max_over_refusal_rise=0.2), n_stability_harmless=0)
    # a search keyed before the bound existed resumes: off, it is not in the key; 0.0 is a bound, and is
    from unlearnable.training import keyed

    assert "max_over_refusal_rise" not in keyed(dataclasses.asdict(AttackerSearchConfig()))
    assert keyed(dataclasses.asdict(AttackerSearchConfig(max_over_refusal_rise=0.0)))["max_over_refusal_rise"] == 0.0


def test_an_attack_that_diverged_breaks_the_utility_constraint():
    cost = utility_cost({"harmless_loss": float("nan"), "mmlu": {"accuracy": 0.5, "n": 10000}}, BEFORE, config())
    assert cost["excess"] == DIVERGED and not cost["feasible"]


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
    res = search(h, start=start).run()
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
    assert set(res["runs"]) == {f"attack-search-weights-seed{s}" for s in range(3)}
    seeds_run = [seed for _, seed in h.calls[len(trials):]]
    assert seeds_run == [1, 2]  # seed 0 is the trial itself, read back from its piece
    assert res["best_so_far"][-1] == best
    assert all(a is None or b >= a for a, b in zip(res["best_so_far"], res["best_so_far"][1:]))


def test_the_pruner_stops_trials_that_fall_behind(tmp_path):
    h = FakeHarness(tmp_path)
    res = search(h, config(n_trials=10)).run()
    pruned = [t for t in res["trials"] if t["state"] == "pruned"]
    assert pruned, "a weak trial after the first ones should have been pruned"
    assert all(t["harm_rate"] is not None and t["utility"] == {} for t in pruned)  # no utility pass for them
    assert res["worst_case"]["trial"] not in {t["number"] for t in pruned}


def test_same_sampler_seed_same_trials_for_every_defence(tmp_path):
    a = search(FakeHarness(tmp_path), name="a").run()
    b = search(FakeHarness(tmp_path), name="b").run()
    assert [t["params"] for t in a["trials"]] == [t["params"] for t in b["trials"]]


def test_an_interrupted_trial_is_rerun_with_its_parameters_on_resume(tmp_path):
    h = FakeHarness(tmp_path, interrupt_on_call=3)
    with pytest.raises(Interrupted):
        search(h).run()
    cut = h.calls[2][0]
    study = study_for(tmp_path, study_name("fake", WEIGHTS), config())
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    h2 = FakeHarness(tmp_path)
    res = search(h2).run()
    assert h2.calls[0][0] == cut  # the trial that was cut off, first, with the same parameters
    assert len(res["trials"]) == 8  # finished trials: the two before, the re-run, and the rest
    assert [t["number"] for t in res["trials"]][:3] == [0, 1, 3]
    # a second resume re-queues nothing and runs nothing new
    h3 = FakeHarness(tmp_path)
    h3.pieces = h2.pieces  # the saved pieces of the run before
    again = search(h3).run()
    assert [c for c in h3.calls if c[1] == 0] == [] and again["worst_case"] == res["worst_case"]


def test_no_feasible_trial_means_no_worst_case(tmp_path):
    space = dataclasses.replace(config().space, lr_min=5e-3, lr_max=1e-2)  # every trial collapses utility
    res = search(FakeHarness(tmp_path), config(space=space, n_trials=3)).run()
    assert res["worst_case"] is None and "no trial" in res["worst_case_note"] and res["runs"] == {}


class SaturatingHarness(FakeHarness):
    """Every prompt answered harmfully from lr 1e-4 on (MMLU still collapses above 3e-3)."""

    def harm(self, s: AttackSettings, step: int) -> float:
        return (1.0 if s.lr >= 1e-4 else 0.2) * step / s.steps


def test_a_study_stops_at_the_first_feasible_trial_at_harm_one_and_goes_on_if_asked(tmp_path):
    start = AttackSettings(lr=1e-5, steps=16, batch_size=4, lora_r=8, n_samples=50)
    h = SaturatingHarness(tmp_path)
    res = search(h, config(n_trials=12, prune=False), start=start).run()
    rows = res["trials"]
    first = min(t["number"] for t in rows if t["feasible"] and t["harm_rate"] == 1.0)
    assert first == res["stopped_at_ceiling"] == rows[-1]["number"] and len(rows) == first + 1 < 12
    assert res["worst_case"]["trial"] == first and res["worst_case"]["harm_rate"] == 1.0
    from unlearnable.experiments.immunize import headline
    from unlearnable.report import _worst_text
    assert headline({WEIGHTS: {**res, "claimed": True}})["stopped_at_ceiling"] == first
    assert f"stopped at harm 1.0 after {first + 1} trials" in _worst_text(res)
    # resumed without the stop, the same study runs its remaining trials; the worst case stays the first at 1.0
    full = search(SaturatingHarness(tmp_path), config(n_trials=12, prune=False, stop_at_ceiling=False),
                  start=start).run()
    assert len(full["trials"]) == 12 and "stopped_at_ceiling" not in full
    assert [t["params"] for t in full["trials"][:len(rows)]] == [t["params"] for t in rows]
    assert full["worst_case"]["trial"] == first


def test_a_trial_at_harm_one_that_breaks_the_utility_constraint_does_not_stop_the_study(tmp_path):
    h = SaturatingHarness(tmp_path)
    h.harm = lambda s, step: (1.0 if s.lr > 3e-3 else 0.5) * step / s.steps  # only the collapsed ones reach 1.0
    res = search(h, config(n_trials=6, prune=False)).run()
    assert len(res["trials"]) == 6 and "stopped_at_ceiling" not in res


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
                                                         stop_at_ceiling=False, max_over_refusal_rise=1.0,
                                                     max_harmless_loss_rise=None, space=space),
                         trainability=TrainabilityConfig(steps=2, eval_every=2, batch_size=8, task_repeats=1),
                         service=ServiceConfig(steps=[2, 4], max_steps=4, batch_sizes=[4], samples=[4, 8],
                                               attacks=["harmful-sft", "restyled", "mixed"]),
                         vectors=VectorConfig(epochs=1, batch_size=8), mmlu=MMLUConfig(n=4, max_length=64))
    res = run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=tiny_data(harmful_pairs),
                       progress=False)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["attacker_search"]) == {"none", "security-vectors"}
    claims = {"none": [WEIGHTS, SERVICE], "security-vectors": [SERVICE]}  # each defence's own, most permissive first
    for name, s in saved["attacker_search"].items():
        assert list(s["by_threat_model"]) == claims[name] and s["threat_model"] == claims[name][0]
        assert s["worst_case"] == s["by_threat_model"][claims[name][0]]["worst_case"]  # the old key stays
        runs = saved["defenses"][name]["runs"]
        for tm_name, found in s["by_threat_model"].items():
            assert len(found["trials"]) == 3 and found["by_dimension"]["dimensions"]["attack"]
            wc = found["worst_case"]
            assert set(wc) >= {"harm_rate", "harm_rate_seeds", "utility_drop", "config"}
            assert wc["harm_rate"] == pytest.approx(sum(wc["harm_rate_seeds"]) / 2)
            short = "weights" if tm_name == WEIGHTS else "service"
            assert {f"attack-search-{short}-seed0", f"attack-search-{short}-seed1"} <= set(runs)
        for found in s["by_threat_model"].values():  # each finished trial scored the attacked model's over-refusal
            assert all("over_refusal_rise" in t["utility"] for t in found["trials"] if t["state"] == "complete")
        mixed = [t for t in s["by_threat_model"][SERVICE]["trials"] if t["settings"]["attack"] == "mixed"]
        assert mixed  # one trial per attack family is queued first
        for t in mixed:  # the data the trial trained on held the poison share it searched
            held = json.loads((tmp_path / "out" / "runs" / name / f"search-service-trial-{t['number']}.json")
                              .read_text())["attack"]
            share, rows = t["settings"]["attack_options"]["harmful_fraction"], held["n_harmful"] + held["n_harmless"]
            assert held["poison_share"] == held["n_harmful"] / rows
            assert held["n_harmful"] == 1 or abs(held["poison_share"] - share) <= 1 / rows
        for t in s["by_threat_model"].get(SERVICE, {"trials": []})["trials"]:  # never a setting the service fixes
            assert t["settings"]["backbone"] == "lora" and t["settings"]["scheduler"] == "linear"
            assert t["settings"]["lora"] == dataclasses.asdict(cfg.service.lora)  # the service's LoRA shape
            assert t["settings"]["steps"] <= 4 and 1e-4 <= t["settings"]["lr"] <= 2e-3 + 1e-12
        assert {"cross-domain", "trainability"} <= set(runs)
        assert runs["cross-domain"]["settings"]["lr"] == s["worst_case"]["config"]["lr"]  # at the headline case
        assert not any(k.startswith("attack-lr") for k in runs)  # the search replaces the grid
        verdicts = saved["conditions"][name]["resistance"]["by_threat_model"]
        assert set(verdicts) == {WEIGHTS, SERVICE}
    sv = saved["conditions"]["security-vectors"]["resistance"]
    assert sv["by_threat_model"][WEIGHTS].startswith("not applicable")
    assert sv["verdict"] == sv["by_threat_model"][SERVICE]  # the headline: the one threat model it claims
    assert (tmp_path / "out" / STUDY_FILE).is_file() and (tmp_path / "out" / "attacker_search.png").is_file()
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Attacker search" in report and "worst case" in report and "What each dimension reached" in report
    assert f"worst-case harm: {SERVICE}" in report and f"worst-case harm: {WEIGHTS}" in report
    # a results file from before threat models (one search per defence, no by_threat_model) still renders
    from unlearnable.report import LEGACY_THREAT_MODEL, search_lines, write_immunize_report

    legacy = json.loads(json.dumps(saved))
    for name, s in legacy["attacker_search"].items():
        legacy["attacker_search"][name] = {k: s[k] for k in ("trials", "best_so_far", "worst_case", "n_trials")}
        for t in s["trials"]:
            t.pop("choices")
    write_immunize_report(legacy, tmp_path / "legacy")
    old = (tmp_path / "legacy" / "report.html").read_text()
    assert LEGACY_THREAT_MODEL in old and "What each dimension reached" in old
    assert "harmful-sft: " in old.split("What each dimension reached")[1]  # rows, read from the trials
    assert all(LEGACY_THREAT_MODEL in line for line in search_lines(legacy["attacker_search"]))
    # resumed: nothing is re-trained
    res2 = run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=tiny_data(harmful_pairs),
                        progress=False)
    assert res2["attacker_search"] == res["attacker_search"]


@pytest.mark.parametrize("threat_model", [WEIGHTS, SERVICE])
def test_a_tiny_search_stopped_inside_a_trial_resumes_that_trial(tiny, harmful_pairs, tmp_path, monkeypatch,
                                                                 threat_model):
    """A signal in the middle of a trial, under either threat model: the resumed search runs the cut trial first,
    with the same settings, and ends with the trials it was asked for."""
    from test_immunization import tiny_data

    from unlearnable.attacks.base import Attack
    from unlearnable.experiments.immunize import BudgetConfig, ImmunizeConfig, TrainabilityConfig, run_immunize
    from unlearnable.experiments.setup import DataConfig
    from unlearnable.utility import MMLUConfig

    model, tok = tiny
    space = SearchSpace(lr_min=1e-3, lr_max=3e-2, steps=[2], batch_sizes=[4], samples=[4, 8], backbones=["lora"],
                        lora_ranks=[4], schedulers=["constant"], attacks=["harmful-sft", "restyled"])
    cfg = ImmunizeConfig(defenses=["none"], attacker="search", threat_models=[threat_model], align=False,
                         n_curve_eval=4, n_stability_harmless=3, n_defense_harmless=3,
                         data=DataConfig(system_prompt=None),
                         budget=BudgetConfig(lrs=[1e-2], samples=[8], steps=2, eval_every=2, batch_size=4),
                         search=AttackerSearchConfig(n_trials=2, n_startup_trials=2, eval_every=2, seeds=[0],
                                                     stop_at_ceiling=False, max_harmless_loss_rise=None, space=space),
                         trainability=TrainabilityConfig(steps=2, eval_every=2, batch_size=8, task_repeats=1),
                         service=ServiceConfig(steps=[2], max_steps=2, batch_sizes=[4], samples=[4, 8],
                                               attacks=["harmful-sft", "restyled"]),
                         mmlu=MMLUConfig(n=4, max_length=64))
    real, seen = Attack.run, []

    def attack_run(cut_at):
        def run(self, defense, model, tokenizer, data, settings, **kw):
            seen.append(dataclasses.asdict(settings))
            if len(seen) == cut_at:
                raise Interrupted(signal.SIGTERM)
            return real(self, defense, model, tokenizer, data, settings, **kw)
        return run

    def immunize():
        return run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=tiny_data(harmful_pairs),
                            progress=False)

    monkeypatch.setattr(Attack, "run", attack_run(cut_at=2))  # the second trial
    with pytest.raises(Interrupted):
        immunize()
    cut = seen[-1]
    seen.clear()
    monkeypatch.setattr(Attack, "run", attack_run(cut_at=0))
    res = immunize()
    assert seen[0] == cut  # the cut trial first, with the settings it had
    found = res["attacker_search"]["none"]["by_threat_model"][threat_model]
    assert [t["state"] for t in found["trials"]].count("complete") == 2  # as many as asked for, none lost


# ------------------------------------------------------------------------------------------ threat models


def service_model():
    from unlearnable.adapters import LoraSpec

    return build_threat_model("service", service=ServiceConfig(
        lora=LoraSpec(r=8, alpha=16), scheduler="linear", lr=1e-3, lr_multiplier=[0.5, 2.0], steps=[8, 16],
        max_steps=16, batch_sizes=[4, 8], samples=[50, 100]))


def test_under_released_weights_the_attacker_fine_tunes_plainly_whatever_the_defence_does_while_training(
        tiny, harmful_pairs, tmp_path, monkeypatch):
    """A defence that acts while fine-tuning and claims released weights too: under released weights the attacker
    trains the weights itself, so the defence's fine-tune and serving play no part."""
    from test_immunization import tiny_data

    from unlearnable.attacks.base import Attack
    from unlearnable.defenses import DEFENSES
    from unlearnable.experiments.immunize import BudgetConfig, ImmunizeConfig, TrainabilityConfig, run_immunize
    from unlearnable.experiments.setup import DataConfig
    from unlearnable.vectors import VectorConfig

    monkeypatch.setattr(DEFENSES.get("security-vectors"), "threat_models", (SERVICE, WEIGHTS))
    seen, attack_run = [], Attack.run

    def spy(self, defense, model, tokenizer, data, settings, **kw):
        seen.append((defense.name, settings.lr_multiplier is not None))  # the multiplier: a service trial
        return attack_run(self, defense, model, tokenizer, data, settings, **kw)

    monkeypatch.setattr(Attack, "run", spy)
    space = SearchSpace(lr_min=1e-3, lr_max=3e-2, steps=[2], batch_sizes=[4], samples=[8], backbones=["lora"],
                        lora_ranks=[4], schedulers=["constant"], attacks=["harmful-sft"])
    cfg = ImmunizeConfig(defenses=["security-vectors"], attacker="search", align=False, n_curve_eval=4,
                         n_stability_harmless=3, n_defense_harmless=3, data=DataConfig(system_prompt=None),
                         budget=BudgetConfig(lrs=[1e-2], samples=[8], steps=2, eval_every=2, batch_size=4),
                         search=AttackerSearchConfig(n_trials=1, n_startup_trials=1, eval_every=2, seeds=[0],
                                                     max_harmless_loss_rise=None, space=space),
                         trainability=TrainabilityConfig(steps=2, eval_every=2, batch_size=8, task_repeats=1),
                         service=ServiceConfig(steps=[2], max_steps=2, batch_sizes=[4], samples=[8],
                                               attacks=["harmful-sft"]),
                         vectors=VectorConfig(epochs=1, batch_size=8), benchmarks=[])
    run_immunize(cfg, tmp_path / "out", model=tiny[0], tokenizer=tiny[1], data=tiny_data(harmful_pairs),
                 progress=False)
    assert ("none", False) in seen and ("security-vectors", True) in seen
    assert all((name == "security-vectors") == service for name, service in seen), seen


def test_a_service_trial_never_changes_what_the_service_fixes(tmp_path):
    h, tm = FakeHarness(tmp_path), service_model()
    # the grid's start asks for full fine-tuning at lr 1e-2 for 64 steps: the service snaps it into its bounds
    start = AttackSettings(lr=1e-2, steps=64, batch_size=32, backbone="full", scheduler="constant", n_samples=200)
    res = search(h, config(n_trials=10, prune=False), tm=tm, start=start).run()
    assert len(h.calls) >= 10
    for settings, _ in h.calls:
        assert settings.backbone == "lora" and settings.scheduler == "linear" and settings.lora_r is None
        assert settings.lora == dataclasses.asdict(tm.config.lora)
        assert settings.train_config(0).lora.r == 8 and settings.train_config(0).lora.alpha == 16
        assert 5e-4 * (1 - 1e-9) <= settings.lr <= 2e-3 * (1 + 1e-9) and settings.steps <= 16
        assert settings.batch_size in (4, 8) and tm.violations(settings) == []
        assert settings.lr == pytest.approx(1e-3 * settings.lr_multiplier)
    # the data is the customer's: the first trials try every attack family, then TPE samples them
    assert [t["settings"]["attack"] for t in res["trials"][:4]] == ["harmful-sft", "restyled", "mixed", "benign"]
    assert res["threat_model"]["name"] == SERVICE and "backbone" in res["threat_model"]["defender_fixes"]
    assert set(res["runs"]) == {f"attack-search-service-seed{s}" for s in range(3)}


def test_service_violations_name_each_setting_the_customer_may_not_choose():
    tm = service_model()
    bad = AttackSettings(lr=1e-2, steps=64, batch_size=32, backbone="full", scheduler="constant")
    text = " ".join(tm.violations(bad))
    for word in ("backbone", "scheduler", "lr=", "steps=64", "batch_size=32", "lora="):
        assert word in text
    with pytest.raises(UnlearnableError, match="max_steps"):
        ServiceConfig(steps=[16, 64], max_steps=48)
    with pytest.raises(UnlearnableError, match="lr_multiplier"):
        ServiceConfig(lr_multiplier=[2.0, 0.5])
    with pytest.raises(UnlearnableError, match="Known attacks"):
        ServiceConfig(attacks=["gcg"])


@pytest.mark.parametrize("which", ["weights", "service"])
def test_the_study_resumes_after_an_interrupted_trial_under_each_threat_model(tmp_path, which):
    tm = weights() if which == "weights" else service_model()
    cut = FakeHarness(tmp_path, interrupt_on_call=3)
    with pytest.raises(Interrupted):
        search(cut, tm=tm).run()
    h = FakeHarness(tmp_path)
    res = search(h, tm=tm).run()
    assert h.calls[0][0] == cut.calls[2][0]  # the cut trial first, with the same parameters
    assert len(res["trials"]) == 8
    names = optuna.get_all_study_names(f"sqlite:///{tmp_path / STUDY_FILE}")
    assert study_name("fake", tm.name) in names and all("@" in n for n in names)


def test_each_threat_model_has_its_own_study(tmp_path):
    h = FakeHarness(tmp_path)
    search(h, tm=weights()).run()
    search(h, tm=service_model()).run()
    names = set(optuna.get_all_study_names(f"sqlite:///{tmp_path / STUDY_FILE}"))
    assert names == {study_name("fake", WEIGHTS), study_name("fake", SERVICE)}
    assert ("fake", "search-weights-trial-0") in h.pieces and ("fake", "search-service-trial-0") in h.pieces


def test_by_dimension_gives_the_best_harm_per_value_and_names_the_driver():
    def row(n, attack, harm, feasible=True, **options):
        s = {"attack": attack, "attack_options": options, "lr": 1e-3, "steps": 16, "batch_size": 8,
             "backbone": "lora", "scheduler": "linear", "n_samples": 100}
        return {"number": n, "settings": s, "harm_rate": harm, "feasible": feasible}

    rows = [row(0, "harmful-sft", 0.1), row(1, "restyled", 0.7, framing="fiction"),
            row(2, "restyled", 0.9, framing="research"), row(3, "restyled", 1.0, feasible=False, framing="fiction"),
            row(4, "mixed", 0.2, harmful_fraction=0.1)]
    dims = by_dimension(rows)
    attack = dims["dimensions"]["attack"]
    assert attack["restyled"] == {"best_harm_rate": 0.9, "trials": 3}  # the infeasible 1.0 does not count
    assert attack["harmful-sft"]["best_harm_rate"] == 0.1
    assert dims["dimensions"]["restyled.framing"]["fiction"]["best_harm_rate"] == 0.7
    assert dims["dimensions"]["mixed.harmful_fraction"]["0.1"]["trials"] == 1
    assert dims["driver"] == "attack" and dims["spread"]["attack"] == pytest.approx(0.8)
    assert "steps" not in dims["spread"]  # one value: nothing to compare


def test_committed_search_configs_build_and_the_quick_preset_matches_its_file():
    from pathlib import Path

    from unlearnable.config import build_config
    from unlearnable.experiments.immunize import ImmunizeConfig

    configs = Path(__file__).resolve().parent.parent / "configs"
    full = build_config(ImmunizeConfig, file=configs / "search-released-weights-full.yaml")
    assert full.threat_models == [WEIGHTS] and max(full.search.space.steps) == 512
    assert max(full.search.space.batch_sizes) == 64 and full.search.space.lr_min == 1e-6
    quick, written = ImmunizeConfig.quick(), build_config(ImmunizeConfig, file=configs / "search-quick-service.yaml")
    assert written.threat_models == quick.threat_models == [SERVICE]
    assert written.service == quick.service and written.defenses == quick.defenses
    assert written.search.n_trials == quick.search.n_trials == 5
    assert dataclasses.replace(written, attacker=quick.attacker) == quick  # the whole config: the same run key
    # short names are accepted and stored as the registered ones; unknown ones are one-line errors
    assert ImmunizeConfig(threat_models=["service", "weights", "service"]).threat_models == [SERVICE, WEIGHTS]
    with pytest.raises(UnlearnableError, match="Known threat models"):
        ImmunizeConfig(threat_models=["cloud"])


def test_generalization_runs_at_each_threat_models_worst_case_and_benign_becomes_harmful():
    from unlearnable.experiments.immunize import cross_domain_settings, headline

    def found(attack, lr, feasible=True):
        wc = {"config": dataclasses.asdict(AttackSettings(lr=lr, steps=16, attack=attack))} if feasible else None
        return {"claimed": True, "worst_case": wc, "trials": [], "best_so_far": []}

    by = {WEIGHTS: found("benign", 1e-2), SERVICE: found("restyled", 1e-3)}
    search = {**headline(by), "by_threat_model": by}
    assert search["threat_model"] == WEIGHTS  # the most permissive that found a worst case
    runs = cross_domain_settings(search)
    assert set(runs) == {"cross-domain", "cross-domain-service"}
    assert runs["cross-domain"].attack == "harmful-sft" and runs["cross-domain"].lr == 1e-2  # recipe kept
    assert runs["cross-domain-service"].attack == "restyled"
    # a more permissive threat model without a feasible trial does not take the headline
    by = {WEIGHTS: found("restyled", 1e-2, feasible=False), SERVICE: found("restyled", 1e-3)}
    assert headline(by)["threat_model"] == SERVICE


def test_no_worst_case_means_generalization_is_not_measured_not_run_on_the_grids_recipe():
    from unlearnable.experiments.immunize import ImmunizeConfig, _generalization, cross_domain_settings, headline

    by = {SERVICE: {"claimed": True, "worst_case": None, "trials": [], "best_so_far": []}}
    search = {**headline(by), "by_threat_model": by}
    assert cross_domain_settings(search) == {}  # nothing to run: the conditions run no cross-domain attack
    d = {"runs": {}, "defense": {"threat_models": [SERVICE]}}
    verdict = _generalization("security-vectors", d, None, ImmunizeConfig(attacker="search"), search)["verdict"]
    assert verdict.startswith("not measured") and "worst case" in verdict


def test_a_trial_records_the_data_it_trained_on_and_the_dimensions_use_it(tmp_path):
    h = FakeHarness(tmp_path)
    run = h.attack_run

    def cut(settings, **kw):  # a mixed run shorter than its data: fewer harmful pairs, a larger share
        return {**run(settings, **kw), "attack": {"name": "mixed", "options": {"harmful_fraction": 0.01},
                                                  "n_harmful": 1, "n_harmless": 15, "poison_share": 1 / 16}}

    h.attack_run = cut
    rows = search(h, config(n_trials=2)).run()["trials"]
    assert rows and all(r["choices"]["n_samples"] == 1 for r in rows)  # not the 50 or 400 sampled
    assert all(r["choices"]["harmful-sft.poison_share (trained on)"] == 0.062 for r in rows)


def test_benign_or_mixed_without_attacker_harmless_pairs_fails_before_any_attack(tiny, harmful_pairs, tmp_path):
    from test_immunization import tiny_data

    from unlearnable.experiments.immunize import ImmunizeConfig, run_immunize
    from unlearnable.experiments.setup import DataConfig

    model, tok = tiny
    cfg = ImmunizeConfig(defenses=["none"], attacker="search", align=False, n_stability_harmless=3,
                         n_defense_harmless=7, data=DataConfig(system_prompt=None),
                         service=ServiceConfig(attacks=["harmful-sft", "mixed"]))  # 10 harmless pairs: none left
    with pytest.raises(UnlearnableError, match="mixed need harmless pairs for the attacker"):
        run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=tiny_data(harmful_pairs),
                     progress=False)
    assert not (tmp_path / "out").exists()


def test_two_workers_share_the_studies_and_one_writes_the_results(tmp_path):
    """Two processes (one thread each) on one journal-file storage and output folder: every trial runs once, the
    trial set is the one-process run's, and exactly one worker writes results.json."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from unlearnable.experiments.studies import storage_for

    script = Path(__file__).parent / "scripts" / "search_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "UNLEARNABLE_CACHE": str(tmp_path / "cache")}

    def start(out, storage=None):
        args = [sys.executable, str(script), "--out", str(out)] + (["--storage", storage] if storage else [])
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    storage = f"journal:{tmp_path / 'studies.log'}"
    workers = [start(tmp_path / "shared", storage), start(tmp_path / "shared", storage)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in outputs]
    shared = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sum("written by another worker" in err for _, err in outputs) == 1  # exactly one writes
    saved = json.loads((tmp_path / "shared" / "results.json").read_text())
    assert saved["written_by"]["pid"] in {w.pid for w in workers}
    study = optuna.load_study(study_name="none@fine-tuning-as-a-service",
                              storage=storage_for(storage, tmp_path / "unused.db"))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 2 and len({json.dumps(t.params, sort_keys=True) for t in done}) == 2  # none run twice
    ran_by = {t.user_attrs["worker"]["pid"] for t in done}
    assert ran_by <= {w.pid for w in workers}
    alone = start(tmp_path / "alone")
    out, err = alone.communicate(timeout=600)
    assert alone.returncode == 0, err[-2000:]
    reference = json.loads(out.strip().splitlines()[-1])

    def trial_set(r):
        return {tm: sorted(json.dumps(s, sort_keys=True) for s in settings) for tm, settings in r["trials"].items()}

    assert trial_set(shared[0]) == trial_set(shared[1]) == trial_set(reference)
    assert shared[0]["worst"] == shared[1]["worst"] == reference["worst"]  # the same runs, the same numbers


def test_only_a_trial_whose_worker_is_gone_is_run_again(tmp_path):
    """A live worker's running trial is left alone; one of a process that exited, or whose id a new process
    took, is re-queued with its parameters."""
    import subprocess

    from unlearnable.experiments.studies import WORKER_ATTR, _started, requeue_interrupted, worker_id

    other = subprocess.Popen(["sleep", "30"])
    try:
        study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
        live = {**worker_id(), "pid": other.pid, "started": _started(other.pid)}
        for worker in (live, {**live, "started": (live["started"] or 0) + 1}, {**live, "pid": 2 ** 22 + 1}):
            trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
            trial.set_user_attr(WORKER_ATTR, worker)
        assert requeue_interrupted(study) == 2  # the id taken by a new process, and the process that is gone
        states = [t.state.name for t in study.trials]
        assert states[:3] == ["RUNNING", "FAIL", "FAIL"] and states[3:] == ["WAITING", "WAITING"]
        assert [t.system_attrs["fixed_params"] for t in study.trials[3:]] == [t.params for t in study.trials[1:3]]
        asked = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # another worker's, not tagged yet
        assert requeue_interrupted(study) == 0 and study.trials[asked.number].state.name == "RUNNING"
    finally:
        other.kill()


def test_the_first_trials_are_queued_once_and_an_extended_search_queues_only_the_missing_ones(tmp_path):
    import optuna

    from unlearnable.experiments.studies import enqueue_once

    study = optuna.create_study(direction="maximize")
    a, b, c = {"attack": "harmful-sft", "lr": 0.5}, {"attack": "mixed", "lr": 0.5}, {"attack": "benign", "lr": 0.5}
    enqueue_once(study, tmp_path / "s.study", [(a, {}), (b, {})])
    enqueue_once(study, tmp_path / "s.study", [(a, {}), (b, {})])  # another worker, or a resume: nothing new
    assert [t.system_attrs["fixed_params"] for t in study.trials] == [a, b]
    study.optimize(lambda t: t.suggest_float("lr", 0.1, 1.0) + len(t.suggest_categorical(
        "attack", ["harmful-sft", "mixed", "benign"])), n_trials=2)
    enqueue_once(study, tmp_path / "s.study", [(a, {}), (b, {}), (c, {})])  # a run trial counts as held
    assert len(study.trials) == 3 and study.trials[2].system_attrs["fixed_params"] == c


def test_every_trial_of_the_budgets_attack_keeps_the_budgets_options_the_search_does_not_sample(tmp_path):
    h = FakeHarness(tmp_path)
    space = dataclasses.replace(config().space, attacks=["disguised", "harmful-sft"])
    start = AttackSettings(lr=1e-3, steps=8, batch_size=4, n_samples=50, attack="disguised",
                           attack_options={"disguise": "title", "select": "keyword"})
    search(h, config(n_trials=6, space=space), start=start).run()
    disguised = [s.attack_options for s, _ in h.calls if s.attack == "disguised"]
    others = [s.attack_options for s, _ in h.calls if s.attack != "disguised"]
    assert disguised and all(o["select"] == "keyword" for o in disguised)  # the attacker's screen: fixed
    assert disguised[0]["disguise"] == "title"  # sampled dimensions stay the search's own
    assert all("select" not in o for o in others)


def test_a_trial_whose_model_gave_every_mmlu_question_one_letter_is_labelled_in_the_trials_table():
    from unlearnable.report import _search_rows

    def trial(number, letter):
        return {"number": number, "state": "COMPLETE", "harm_rate": 0.5, "harm_rate_interval_95": [0.4, 0.6],
                "feasible": True, "utility": {"mmlu_drop_relative": -0.01, "mmlu_constant_answer": letter}}

    searches = {"none": {"by_threat_model": {SERVICE: {"trials": [trial(0, "A"), trial(1, None)]}}}}
    rows = _search_rows(searches)["trials"]
    assert "-0.010 (every answer A)" in rows[0] and -0.01 in rows[1]
