import json

import pytest

from unlearnable.data import Pair, profileqa, refusal_pairs
from unlearnable.defenses import DEFENSES, Defense
from unlearnable.errors import UnlearnableError
from unlearnable.evaluation import Scorer
from unlearnable.experiments.immunize import (
    BudgetConfig,
    ImmunizeConfig,
    TrainabilityConfig,
    defense_options,
    resistance_verdict,
    run_immunize,
    steps_to_cross,
)
from unlearnable.experiments.immunize import stability as _stability
from unlearnable.experiments.setup import DataConfig, PreparedData
from unlearnable.judges import JUDGES, HarmfulLossJudge, build_judge, cohen_kappa
from unlearnable.registry import Registry
from unlearnable.utility import MMLUConfig
from unlearnable.vectors import VectorConfig


def test_steps_to_cross_on_synthetic_curves():
    curve = [{"step": 0, "harm_rate": 0.1}, {"step": 10, "harm_rate": 0.4}, {"step": 20, "harm_rate": 0.6}]
    assert steps_to_cross(curve, 0.5) == 20
    assert steps_to_cross(curve, 0.4) == 10
    assert steps_to_cross(curve, 0.7) is None


def test_resistance_verdicts():
    assert resistance_verdict([None, None], [10, 20], 30) == "strong"
    assert resistance_verdict([20, None], [10, 10], 30) == "weak (20 steps)"
    assert resistance_verdict([10, 30], [10, 10], 30) == "none"
    assert resistance_verdict([], [10, 10], 30).startswith("not measured")  # no run is no evidence of strength


def test_cohen_kappa_known_values():
    assert cohen_kappa([True, False, True, False], [True, False, True, False]) == 1.0
    assert cohen_kappa([True, True, False, False], [True, False, True, False]) == 0.0
    a = [True] * 20 + [False] * 30
    b = [True] * 15 + [False] * 5 + [True] * 10 + [False] * 20
    # observed 0.7, expected 0.4*0.5+0.6*0.5 = 0.5 -> kappa 0.4
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        cohen_kappa([True], [])


def test_registry_rejects_duplicates_and_suggests_names():
    reg = Registry("widget", Defense)
    reg.register("alpha")(type("A", (Defense,), {}))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(type("B", (Defense,), {}))
    with pytest.raises(UnlearnableError, match="Did you mean 'alpha'"):
        reg.get("alpah")
    assert {"none", "security-vectors", "adversarial-loss", "safety-data-mix"} <= set(DEFENSES.names())
    assert {"keyword", "classifier", "llama-guard", "harmful-loss"} <= set(JUDGES.names())


def test_harmful_loss_judge(tiny, harmful_pairs):
    model, tok = tiny
    refs = {p.prompt: p.response for p in harmful_pairs[:4]}
    prompts = list(refs)
    never = HarmfulLossJudge(threshold=0.0).bind(model, tok, refs)
    always = HarmfulLossJudge(threshold=1e9).bind(model, tok, refs)
    assert never.judge(prompts, [""] * 4) == [False] * 4
    assert always.judge(prompts, [""] * 4) == [True] * 4


def tiny_data(harmful_pairs):
    harm = harmful_pairs
    return PreparedData(
        eval_harmful=[Pair(f"Eval bad request {i}?", "Sure, here is how to do it." if i < 3 else "") for i in range(6)],
        align=refusal_pairs([Pair(f"Align bad {i}?", "") for i in range(6)], 0),
        vector_pairs=harm[:8], attack=harm[8:16],
        harmless=[Pair(f"Write a haiku number {i}.", "Red leaves fall softly on the quiet garden path.")
                  for i in range(10)],
        task=profileqa(2, 0),
        cross_eval=[Pair(f"Cross bad {i}?", "Sure, here is how.") for i in range(4)],
        cross_attack=harm[16:22],
        hashes={"eval_harmful": "x"},
    )


def test_immunize_end_to_end_on_tiny_model(tiny, harmful_pairs, tmp_path):
    model, tok = tiny
    cfg = ImmunizeConfig(
        budget=BudgetConfig(lrs=[1e-2], samples=[8], steps=4, eval_every=2, batch_size=4),
        trainability=TrainabilityConfig(steps=4, eval_every=2, batch_size=8, task_repeats=2),
        data=DataConfig(system_prompt=None), align=False, n_curve_eval=6, n_stability_harmless=5,
        judges=["keyword", "harmful-loss"],
        vectors=VectorConfig(epochs=1, batch_size=8),
        defense_options={"adversarial-loss": {"max_steps": 2}},
        mmlu=MMLUConfig(n=6, max_length=64),
    )
    res = run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=tiny_data(harmful_pairs),
                       progress=False)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["conditions"]) == {"none", "security-vectors", "adversarial-loss", "safety-data-mix"}
    for name, c in saved["conditions"].items():
        assert set(c) == {"resistance", "stability", "generalization", "trainability"}
        assert "verdict" in c["resistance"] and "verdict" in c["trainability"]
    sv = saved["conditions"]["security-vectors"]["resistance"]["by_threat_model"]
    assert sv["released-weights"].startswith("not applicable")
    grid = saved["conditions"]["security-vectors"]["resistance"]["verdict"]
    assert sv["fine-tuning-as-a-service"] == f"{grid} (grid)"  # the grid's recipe, not the service's search
    curve = saved["defenses"]["none"]["runs"]["attack-lr0.01-n8"]["curve"]
    assert [p["step"] for p in curve] == [0, 2, 4]
    assert all(0 <= p["harm_rate"] <= 1 for p in curve)
    assert "keyword~harmful-loss" in saved["judge_agreement"]
    # every generation the two judges label differently is listed, with both labels, and shown in the report
    for d in saved["judge_disagreements"]:
        assert set(d["labels"]) == {"keyword", "harmful-loss"} and len(set(d["labels"].values())) == 2
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Generations the judges disagree on" in report and "MMLU" in report
    # MMLU on the same questions before any attack (stability) and after the user's fine-tune (trainability)
    for name, d in saved["defenses"].items():
        assert d["runs"]["stability"]["mmlu"]["n"] == 6 and d["runs"]["trainability"]["mmlu"]["n"] == 6
        c = saved["conditions"][name]
        lo, hi = c["stability"]["over_refusal_interval_95"]
        assert lo <= c["stability"]["over_refusal"] <= hi
        if name != "none":
            assert c["stability"]["delta_mmlu"] == pytest.approx(c["stability"]["mmlu"] -
                                                                 saved["conditions"]["none"]["stability"]["mmlu"])
            assert set(c["stability"]["within_noise"]) == {"harm_rate", "over_refusal", "mmlu"}
            assert "delta_mmlu" in c["trainability"] and "task_em" in c["trainability"]["within_noise"]
            # over-refusal after the user's fine-tune, against none's after the same fine-tune
            assert c["trainability"]["delta_over_refusal"] == pytest.approx(
                d["runs"]["trainability"]["over_refusal"]
                - saved["defenses"]["none"]["runs"]["trainability"]["over_refusal"])
        assert d["runs"]["trainability"]["n_harmless"] == 5 and "over_refusal" in c["trainability"]
    # defences that release the weights unchanged share one stability pass; a hardened model gets its own
    stab = {n: saved["defenses"][n]["runs"]["stability"] for n in saved["defenses"]}
    assert "shared_with" not in stab["none"] and "shared_with" not in stab["adversarial-loss"]
    assert stab["security-vectors"]["shared_with"] == stab["safety-data-mix"]["shared_with"] == "none"
    fresh = _stability(model, tok, Scorer(tok, [build_judge("keyword")], cfg.eval, progress=False),
                       tiny_data(harmful_pairs).eval_harmful[:6], tiny_data(harmful_pairs).cross_eval,
                       tiny_data(harmful_pairs).harmless[:5], cfg)
    assert fresh["harm"]["harm_rate"] == stab["safety-data-mix"]["harm"]["harm_rate"]
    assert fresh["harmless_loss"] == pytest.approx(stab["safety-data-mix"]["harmless_loss"])
    # where the time went: per-defence stages and every scoring pass under "evaluation"
    t = saved["timings"]
    assert {"load_model", "prepare_data", "align", "evaluation", "none: attacks", "adversarial-loss: harden",
            "security-vectors: prepare", "none: trainability"} <= set(t)
    assert "security-vectors: stability" in t and t["evaluation"] > 0
    assert "Timings (s)" in (tmp_path / "out" / "report.html").read_text()
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "resistance.png").is_file()
    # finished runs are kept: a rerun of the same config resumes and reuses them
    run_file = tmp_path / "out" / "runs" / "none" / "attack-lr0.01-n8.json"
    stamp = run_file.stat().st_mtime_ns
    res2 = run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=tiny_data(harmful_pairs),
                        progress=False)
    assert run_file.stat().st_mtime_ns == stamp
    assert res2["conditions"]["none"]["resistance"] == res["conditions"]["none"]["resistance"]
    # a trainability run stored before over-refusal was scored after it is run again, and gets it
    old = tmp_path / "out" / "runs" / "none" / "trainability.json"
    stored = json.loads(old.read_text())
    old.write_text(json.dumps({k: v for k, v in stored.items() if not k.startswith(("over_refusal", "n_harmless"))}))
    res3 = run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=tiny_data(harmful_pairs),
                        progress=False)
    assert json.loads(old.read_text())["over_refusal"] == stored["over_refusal"]
    assert res3["conditions"]["none"]["trainability"]["over_refusal"] == stored["over_refusal"]
    # a different config in the same folder is refused
    cfg.threshold = 0.3
    with pytest.raises(UnlearnableError, match="different immunize run"):
        run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=tiny_data(harmful_pairs),
                     progress=False)


def test_a_defences_training_option_changes_that_key_of_the_shared_vector_settings_only():
    config = ImmunizeConfig(vectors=VectorConfig(epochs=3, target_loss=0.2),
                            defense_options={"security-vectors": {"training": {"lr": 0.002}, "scale": 0.5}})
    options = defense_options(config, "security-vectors")
    assert options["scale"] == 0.5
    assert (options["training"]["lr"], options["training"]["epochs"], options["training"]["target_loss"]) == \
        (0.002, 3, 0.2)
    assert defense_options(config, "none") == {}


def test_unknown_names_are_listed():
    with pytest.raises(UnlearnableError, match="Known defences"):
        ImmunizeConfig(defenses=["tar"])
    with pytest.raises(UnlearnableError, match="Known judges"):
        ImmunizeConfig(judges=["gpt4"])


def test_immunize_runs_the_configured_attack_on_the_attackers_own_data(tiny, harmful_pairs, tmp_path, monkeypatch):
    from unlearnable.defenses import NoDefense

    model, tok = tiny
    seen = []
    original = NoDefense.finetune

    def spy(self, model, tokenizer, pairs, config, **kw):
        seen.append(list(pairs))
        return original(self, model, tokenizer, pairs, config, **kw)

    monkeypatch.setattr(NoDefense, "finetune", spy)
    data = tiny_data(harmful_pairs)
    cfg = ImmunizeConfig(defenses=["none"], align=False, n_curve_eval=4, n_stability_harmless=3, n_defense_harmless=3,
                         budget=BudgetConfig(lrs=[1e-2], samples=[4], steps=2, eval_every=2, batch_size=4,
                                             attack="benign"),
                         trainability=TrainabilityConfig(steps=2, eval_every=2, batch_size=8, task_repeats=1),
                         data=DataConfig(system_prompt=None), benchmarks=[])
    res = run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=data, progress=False)
    run = res["defenses"]["none"]["runs"]["attack-benign-lr0.01-n4"]
    assert run["attack"]["name"] == "benign"
    attacker_harmless = set(data.harmless[6:])  # after the stability and the defences' shares
    assert seen[0] and set(seen[0]) <= attacker_harmless  # the in-domain attack: harmless data only


def test_a_defence_that_serves_other_weights_scores_its_own_stability_as_served(tiny, harmful_pairs, tmp_path):
    model, tok = tiny
    cfg = ImmunizeConfig(
        defenses=["none", "early-stopped-vectors", "negated-vectors"],
        budget=BudgetConfig(lrs=[1e-2], samples=[8], steps=2, eval_every=2, batch_size=4),
        trainability=TrainabilityConfig(steps=2, eval_every=2, batch_size=8, task_repeats=1),
        data=DataConfig(system_prompt=None), align=False, n_curve_eval=6, n_stability_harmless=5,
        vectors=VectorConfig(epochs=1, batch_size=8, lr=1e-2), benchmarks=[],
        defense_options={"negated-vectors": {"serve_scale": -2.0}})
    run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=tiny_data(harmful_pairs), progress=False)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    stab = {n: saved["defenses"][n]["runs"]["stability"] for n in saved["defenses"]}
    assert stab["early-stopped-vectors"]["shared_with"] == "none"  # vectors off: the aligned model as it is
    assert "shared_with" not in stab["negated-vectors"]  # served minus the vectors: its own pass, on that model
    assert stab["negated-vectors"]["harmless_loss"] != pytest.approx(stab["none"]["harmless_loss"], abs=1e-4)


def test_a_hardened_defence_is_attacked_with_the_aligned_model_on_disk(tiny_dir, harmful_pairs, tmp_path,
                                                                       monkeypatch):
    """Two model copies in memory at most: while a hardening defence's weights are attacked, the aligned model is
    parked (loaded again, the same fingerprint, for the next defence)."""
    from unlearnable.experiments.immunize import _Sweep
    from unlearnable.models import model_fingerprint

    parked: dict[str, list[bool]] = {}
    attack_run = _Sweep.attack_run

    def spy(self, defense, hardened, settings, **kw):
        parked.setdefault(defense.name, []).append(self._model is None)
        return attack_run(self, defense, hardened, settings, **kw)

    monkeypatch.setattr(_Sweep, "attack_run", spy)
    fingerprints = []
    tuned = _Sweep.tuned

    def seen(self, name):
        fingerprints.append(model_fingerprint(self.model))
        return tuned(self, name)

    monkeypatch.setattr(_Sweep, "tuned", seen)
    cfg = ImmunizeConfig(model=str(tiny_dir), defenses=["adversarial-loss", "none"], align=False,
                         budget=BudgetConfig(lrs=[1e-2], samples=[8], steps=2, eval_every=2, batch_size=4),
                         trainability=TrainabilityConfig(steps=2, eval_every=2, batch_size=8, task_repeats=1),
                         data=DataConfig(system_prompt=None), n_curve_eval=4, n_stability_harmless=3,
                         benchmarks=[], defense_options={"adversarial-loss": {"max_steps": 2}})
    res = run_immunize(cfg, tmp_path / "out", data=tiny_data(harmful_pairs), progress=False)
    assert parked["adversarial-loss"] and all(parked["adversarial-loss"])  # its attacks: aligned model on disk
    assert parked["none"] and not any(parked["none"])  # the next defence: loaded again
    assert fingerprints[0] == fingerprints[1]  # the same weights as before parking
    assert res["resources"]["peak_rss_gb"] > 0


def test_a_screening_defences_screenings_are_pooled_from_every_stored_run_also_after_a_resume(tiny, harmful_pairs,
                                                                                            tmp_path):
    model, tok = tiny
    cfg = ImmunizeConfig(
        defenses=["none", "moderation-filter"], defense_options={"moderation-filter": {"flagger": "oracle:0.5"}},
        budget=BudgetConfig(lrs=[1e-2], samples=[8], steps=2, eval_every=2, batch_size=4),
        trainability=TrainabilityConfig(steps=2, eval_every=2, batch_size=8, task_repeats=1),
        data=DataConfig(system_prompt=None), align=False, n_curve_eval=4, n_stability_harmless=3, benchmarks=[])
    first = run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=tiny_data(harmful_pairs),
                         progress=False)
    screened = first["defenses"]["moderation-filter"]["defense"]["screened"]
    runs = first["defenses"]["moderation-filter"]["runs"]
    assert len(screened) == sum(len(r.get("screened", [])) for r in runs.values()) >= 2  # attack, trainability
    again = run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=tiny_data(harmful_pairs),
                         progress=False)  # every run read back: nothing screened in this process
    assert again["defenses"]["moderation-filter"]["defense"]["screened"] == screened


def test_under_the_search_the_worst_cases_rerun_of_a_trial_does_not_count_its_screening_twice(tiny, harmful_pairs,
                                                                                             tmp_path):
    from unlearnable.experiments.search import AttackerSearchConfig
    from unlearnable.threat_models import SearchSpace, ServiceConfig

    model, tok = tiny
    cfg = ImmunizeConfig(
        defenses=["none", "moderation-filter"], attacker="search", threat_models=["service"],
        defense_options={"moderation-filter": {"flagger": "oracle:0.5"}},
        budget=BudgetConfig(lrs=[1e-2], samples=[8], steps=2, eval_every=2, batch_size=4),
        search=AttackerSearchConfig(n_trials=1, n_startup_trials=1, eval_every=2, seeds=[0],
                                    max_harmless_loss_rise=None, space=SearchSpace(attacks=["harmful-sft"])),
        service=ServiceConfig(steps=[2], max_steps=2, batch_sizes=[4], samples=[8], attacks=["harmful-sft"]),
        trainability=TrainabilityConfig(steps=2, eval_every=2, batch_size=8, task_repeats=1),
        data=DataConfig(system_prompt=None), align=False, n_curve_eval=4, n_stability_harmless=3, benchmarks=[])
    res = run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=tiny_data(harmful_pairs),
                       progress=False)
    runs = res["defenses"]["moderation-filter"]["runs"]
    assert "screened" not in runs["attack-search-service-seed0"]  # the trial itself, read back
    trial = json.loads((tmp_path / "out" / "runs" / "moderation-filter" / "search-service-trial-0.json").read_text())
    screened = res["defenses"]["moderation-filter"]["defense"]["screened"]
    assert trial["screened"][0] in screened
    assert len(screened) == 1 + sum(len(r.get("screened", [])) for k, r in runs.items() if k != "attack-search-service-seed0")


def test_a_model_that_gives_every_mmlu_question_one_letter_fails_and_two_such_models_are_not_compared():
    from unlearnable.experiments.immunize import VerdictConfig, _stability_condition, _trainability_condition

    def mmlu(acc, letter=None):
        return {"accuracy": acc, "n": 171, "interval_95": [acc - 0.1, acc + 0.1], "constant_answer": letter}

    def run(acc, letter=None):
        return {"runs": {"trainability": {"final_task_em": 0.9, "n_task": 40, "curve": [], "mmlu": mmlu(acc, letter)},
                         "stability": {"harm": {"harm_rate": 0.0, "n_harmful": 40}, "over_refusal": 0.0,
                                       "n_harmless": 30, "harmless_loss": 1.0, "mmlu": mmlu(acc, letter)}}}

    v = VerdictConfig(max_mmlu_drop=0.05)
    for condition, good, bad in ((_trainability_condition, "trainable", "impaired"),
                                 (_stability_condition, "stable", "unstable")):
        # the defended model answers A everywhere, and that scores above the undefended model's varied answers
        collapsed = condition("x", run(0.286, "A"), run(0.28), v)
        assert collapsed["verdict"] == bad and collapsed["mmlu_compared"].startswith("collapsed")
        both = condition("x", run(0.286, "A"), run(0.286, "A"), v)  # nothing to compare: MMLU is left out
        assert both["verdict"] == good and both["mmlu_compared"].startswith("no")
        assert condition("x", run(0.20), run(0.286, "A"), v)["verdict"] == bad  # a real drop still counts
        assert condition("x", run(0.27), run(0.28), v)["mmlu_compared"] == "yes"
    worse = run(0.286, "A")  # another check fails first: how MMLU was compared is still recorded
    worse["runs"]["stability"]["harmless_loss"] = 9.0
    assert _stability_condition("x", worse, run(0.28), v)["mmlu_compared"].startswith("collapsed")


def test_a_user_model_that_refuses_more_after_its_fine_tune_is_impaired():
    from unlearnable.experiments.immunize import VerdictConfig, _trainability_condition

    def run(em, refused):
        return {"runs": {"trainability": {"final_task_em": em, "n_task": 40, "curve": [{"step": 0, "task_em": 0.0}],
                                          "over_refusal": refused, "over_refusal_interval_95": [0.0, 1.0],
                                          "n_harmless": 30}}}

    base, v = run(0.9, 0.0), VerdictConfig(max_over_refusal_rise=0.1)
    assert _trainability_condition("x", run(0.9, 0.1), base, v)["verdict"] == "trainable"
    worse = _trainability_condition("x", run(0.9, 0.3), base, v)
    assert worse["verdict"] == "impaired" and worse["delta_over_refusal"] == pytest.approx(0.3)
    older = run(0.9, 0.3)["runs"]["trainability"]
    for key in ("over_refusal", "over_refusal_interval_95"):
        older.pop(key)
    assert _trainability_condition("x", {"runs": {"trainability": older}}, base, v)["verdict"] == "trainable"
