"""Defence tuning: each defence tuned on its own held-out data, never the evaluation's, within the
stability constraint; and the hardening defences' step budgets."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from unlearnable.data import Pair, prompt_hashes
from unlearnable.defenses import DEFENSES, DefenseData
from unlearnable.errors import UnlearnableError
from unlearnable.experiments.immunize import VerdictConfig
from unlearnable.experiments.studies import DIVERGED
from unlearnable.experiments.tuning import TuneConfig, best_trial, constraint, tuning_split
from unlearnable.training import StopBelowLoss


def own_data(n_harmful=10, n_harmless=6) -> DefenseData:
    harmful = [Pair(f"Bad {i}?", f"Sure {i}.") for i in range(n_harmful)]
    refusals = [Pair(f"Bad {i}?", "I can't help with that.") for i in range(n_harmful)]
    harmless = [Pair(f"Poem {i}.", "Leaves.") for i in range(n_harmless)]
    return DefenseData(harmful=harmful, refusals=refusals, harmless=harmless)


def test_the_tuning_split_holds_out_prompts_the_defence_never_trains_on():
    split = tuning_split(own_data(), TuneConfig(heldout=0.4, n_harmless=2), seed=0)
    held = set(prompt_hashes(split.attack + split.prompts))
    assert len(split.attack) == 2 and len(split.prompts) == 2 and len(split.defense.harmful) == 6
    assert not set(prompt_hashes(split.attack)) & set(prompt_hashes(split.prompts))
    assert not held & set(prompt_hashes(split.defense.harmful))
    assert not held & set(prompt_hashes(split.defense.refusals))  # a refusal of a held-out prompt is dropped too
    assert len(split.defense.refusals) == 6
    assert not set(split.harmless) & set(split.defense.harmless) and len(split.harmless) == 2
    assert split.record()["prompt_hashes"] == prompt_hashes(split.attack + split.prompts + split.harmless)
    with pytest.raises(UnlearnableError, match="tune.n_harmless"):
        tuning_split(own_data(n_harmless=2), TuneConfig(n_harmless=2), seed=0)


def test_the_constraint_is_the_stability_verdicts_against_the_undefended_model():
    base = {"harmless_loss": 1.0, "over_refusal": 0.1, "harm_rate": 0.0, "mmlu": 0.4}
    v = VerdictConfig()
    assert constraint({"before": dict(base)}, {"before": base}, v)["feasible"]
    for key, value in [("harmless_loss", 1.2), ("over_refusal", 0.3), ("harm_rate", 0.2), ("mmlu", 0.3)]:
        c = constraint({"before": {**base, key: value}}, {"before": base}, v)
        assert not c["feasible"] and c["excess"] > 0, key
    # no benchmark: not part of the constraint
    assert constraint({"before": {**base, "mmlu": None}}, {"before": base}, v)["feasible"]


def test_a_diverged_trial_is_infeasible_and_the_study_goes_on(tmp_path):
    optuna = pytest.importorskip("optuna")
    base = {"harmless_loss": 1.0, "over_refusal": 0.1, "harm_rate": 0.0, "mmlu": 0.4}
    nan = constraint({"before": {**base, "harmless_loss": float("nan")}}, {"before": base}, VerdictConfig())
    assert not nan["feasible"] and nan["excess"] == DIVERGED
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=1))

    def objective(trial):  # as the tuner hands TPE its constraint
        trial.suggest_float("x", 0, 1)
        trial.set_constraint("stability", nan["excess"])
        return 0.5

    study.optimize(objective, n_trials=3)  # a NaN constraint value raised here and ended the study
    assert len(study.trials) == 3


def test_the_constraint_reads_trainability_where_both_were_probed():
    before = {"harmless_loss": 1.0, "over_refusal": 0.1, "harm_rate": 0.0, "mmlu": 0.4}
    base = {"before": before, "trainability": {"task_em": 0.8, "mmlu": 0.4}}
    v = VerdictConfig(min_trainability_ratio=0.9, max_mmlu_drop=0.05)

    def trained(em, mmlu=0.4):
        return {"before": dict(before), "trainability": {"task_em": em, "mmlu": mmlu}}

    assert constraint(trained(0.76), base, v)["feasible"]  # 0.95x
    lost = constraint(trained(0.05), base, v)  # stable before any fine-tune, the user's task lost after it
    assert not lost["feasible"] and lost["deltas"]["task_em_ratio"] == pytest.approx(0.0625)
    assert lost["excess"] == pytest.approx(0.9 - 0.0625)
    assert not constraint(trained(0.8, mmlu=0.3), base, v)["feasible"]  # MMLU after the fine-tune
    assert constraint(trained(0.05), {"before": before}, v)["feasible"]  # no baseline probe: stability only
    unlearnt = {**base, "trainability": {"task_em": 0.0, "mmlu": 0.4}}
    assert constraint(trained(0.0), unlearnt, v)["feasible"]  # the undefended model learnt nothing: no ratio
    # the user's model refusing more of the tuning's harmless prompts after the fine-tune, as the verdict reads it
    refusing = {**base, "trainability": {"task_em": 0.8, "mmlu": 0.4, "over_refusal": 0.0}}
    more = trained(0.8)
    more["trainability"]["over_refusal"] = 0.3
    found = constraint(more, refusing, v)
    assert not found["feasible"] and found["deltas"]["over_refusal_after_finetune"] == pytest.approx(0.3)
    more["trainability"]["over_refusal"] = 0.05
    assert constraint(more, refusing, v)["feasible"]


def test_the_trainability_probe_asks_about_none_of_the_evaluations_people():
    from unlearnable.data import profileqa
    from unlearnable.experiments.trainability import own_task

    evaluation = profileqa(8, seed=0)
    task = own_task(8, seed=0, exclude=evaluation)  # the same seed: every person taken, fresh ones drawn
    assert len(task) == 40 and not set(prompt_hashes(task)) & set(prompt_hashes(evaluation))
    assert own_task(8, seed=1, exclude=evaluation) == own_task(8, seed=1, exclude=evaluation)


def test_only_defences_that_act_while_fine_tuning_get_the_probe_by_default(tmp_path):
    from unlearnable.experiments.trainability import TrainabilityConfig
    from unlearnable.experiments.tuning import Tuner

    def tuner(mode):
        return Tuner(model=None, tokenizer=None, scorer=None, probe=None, verdicts=VerdictConfig(),
                     config=TuneConfig(trainability=mode), out=tmp_path, seed=0, piece=None,
                     task=[Pair("Q?", "A")], trainability=TrainabilityConfig())

    acting = {n for n in DEFENSES.names() if DEFENSES.get(n)().acts_while_finetuning()}
    assert {"lisa", "safe-lora", "security-vectors"} <= acting
    assert not {"none", "vaccine", "booster", "repnoise"} & acting
    assert tuner("auto").probes_trainability(DEFENSES.get("lisa")())
    assert not tuner("auto").probes_trainability(DEFENSES.get("vaccine")())
    assert tuner("always").probes_trainability(DEFENSES.get("vaccine")())
    assert not tuner("never").probes_trainability(DEFENSES.get("lisa")())
    with pytest.raises(UnlearnableError, match="tune.trainability"):
        TuneConfig(trainability="sometimes")


def test_tuning_data_that_holds_an_evaluation_prompt_is_refused_before_any_study(tmp_path):
    from unlearnable.experiments.trainability import TrainabilityConfig
    from unlearnable.experiments.tuning import Tuner

    only_refused = Pair("A prompt only the alignment refusals hold?", "I can't help with that.")
    data = dataclasses.replace(own_data(), refusals=[*own_data().refusals, only_refused])
    # wherever the split puts it (trained on, attacked with or scored), or among the alignment refusals
    for leaked in (data.harmful[3], only_refused):
        tuner = Tuner(model=None, tokenizer=None, scorer=None, probe=None, verdicts=VerdictConfig(),
                      config=TuneConfig(n_harmless=2), out=tmp_path, seed=0, piece=None,
                      trainability=TrainabilityConfig(), evaluation_hashes=prompt_hashes([leaked]))
        with pytest.raises(UnlearnableError, match="also in the evaluation"):
            tuner.tune("vaccine", {}, data)


def test_repnoise_tunes_a_lora_over_a_lora_learning_rate():
    full = DEFENSES.get("repnoise")().tuning_space()["lr"]
    lora = DEFENSES.get("repnoise")(backbone="lora").tuning_space()["lr"]
    assert full.high <= lora.low < 5e-4 < lora.high  # the help's ~5e-4 for a LoRA is inside its range


def test_the_tuned_trial_is_the_least_harmful_within_the_constraint():
    def row(n, harm, feasible=True, defaults=False):
        return {"number": n, "objective": harm, "feasible": feasible, "defaults": defaults}

    rows = [row(0, 0.5, defaults=True), row(1, 0.1, feasible=False), row(2, 0.3), row(3, 0.3)]
    assert best_trial(rows)["number"] == 2  # the infeasible 0.1 never wins; ties go to the earlier
    assert best_trial([row(0, 0.2, defaults=True), row(1, 0.2)])["defaults"]
    assert best_trial([row(0, 0.2, feasible=False)]) is None


def test_every_declared_tunable_option_is_a_config_field_with_its_default_in_range():
    tuned = 0
    for name in DEFENSES.names():
        defense = DEFENSES.get(name)()
        for key, t in defense.tuning_space().items():
            tuned += 1
            default = getattr(defense.config, key)
            assert t.low < t.high and (not t.log or t.low > 0), (name, key)
            assert default is None or t.low <= default <= t.high, (name, key)
    assert tuned >= 8
    assert set(DEFENSES.get("safe-lora")(select="threshold").tuning_space()) == {"threshold"}
    assert set(DEFENSES.get("booster")().tuning_space()) == {"lam", "alpha"}


def test_a_whole_number_option_is_suggested_whole_and_a_small_space_is_a_grid():
    import optuna

    from unlearnable.experiments.tuning import grid

    space = DEFENSES.get("early-stopped-vectors")(scale=1.0).tuning_space()
    assert set(space) == {"scale", "anchors", "refusal_anchors"}
    assert grid(space, {"scale": None, "anchors": 0, "refusal_anchors": 0}) is None  # scale is continuous
    whole = {k: space[k] for k in ("anchors", "refusal_anchors")}
    cells = grid(whole, {"anchors": 0, "refusal_anchors": 1})
    assert len(cells) == 5 * 3 - 1 and {"anchors": 0, "refusal_anchors": 1} not in cells
    assert {"anchors": 4, "refusal_anchors": 2} in cells
    study = optuna.create_study()
    for _ in range(4):
        value = space["anchors"].suggest(study.ask(), "anchors")
        assert isinstance(value, int) and 0 <= value <= 4
    assert "anchors" not in DEFENSES.get("negated-vectors")().tuning_space()  # it refuses anchors
    with pytest.raises(UnlearnableError, match="mixed_probe"):
        TuneConfig(mixed_probe=True, trainability="never")


def test_a_sweep_from_before_the_mixed_probe_keeps_its_key_and_old_trials_read_their_objective():
    from unlearnable.experiments.tuning import trial_row
    from unlearnable.training import keyed

    before = {"tune": {k: v for k, v in dataclasses.asdict(TuneConfig()).items() if k != "mixed_probe"}}
    assert keyed({"tune": dataclasses.asdict(TuneConfig())}) == keyed(before)
    assert keyed({"tune": dataclasses.asdict(TuneConfig(mixed_probe=True))}) != keyed(before)

    class Old:  # a trial stored before the objective was recorded
        number, state = 0, type("S", (), {"name": "COMPLETE"})
        user_attrs = {"measured": {"probe_harm_rate": 0.4}, "within": {"feasible": True}}

    assert trial_row(Old())["objective"] == 0.4


def test_anchors_are_not_tuned_where_the_defence_has_no_pairs_to_copy():
    from unlearnable.defenses.base import Tunable

    defense = DEFENSES.get("early-stopped-vectors")()
    assert defense.untunable(own_data()) == set()
    bare = DefenseData(harmful=own_data().harmful)
    assert defense.untunable(bare) == {"anchors", "refusal_anchors"}
    with pytest.raises(ValueError, match="low > 0"):
        Tunable(0, 4, log=True, integer=True)


def test_the_mixed_probe_scores_harm_after_the_task_and_a_small_space_is_searched_whole(tiny, harmful_pairs, tmp_path,
                                                                                      monkeypatch):
    from test_immunization import tiny_data

    from unlearnable.evaluation import Scorer
    from unlearnable.experiments.immunize import BudgetConfig, ImmunizeConfig, TrainabilityConfig, run_immunize
    from unlearnable.experiments.setup import DataConfig

    model, tok = tiny
    data = tiny_data(harmful_pairs)
    after: list[list[Pair]] = []
    harm = Scorer.harm

    def spy(self, m, prompts, desc=""):
        if "harm after the task" in desc:
            after.append(list(prompts))
        return harm(self, m, prompts, desc)

    monkeypatch.setattr(Scorer, "harm", spy)
    options = {"refusal_anchors": 1, "scale": 1.0, "epochs": 1.0, "holdout": 0.25}
    cfg = ImmunizeConfig(defenses=["none", "early-stopped-vectors"], align=False, n_curve_eval=4,
                         n_stability_harmless=3, n_defense_harmless=6, data=DataConfig(system_prompt=None),
                         benchmarks=[], budget=BudgetConfig(lrs=[1e-2], samples=[8], steps=2, eval_every=2,
                                                            batch_size=4),
                         trainability=TrainabilityConfig(steps=2, eval_every=2, batch_size=8, task_repeats=1),
                         tune=TuneConfig(n_trials=5, n_harmless=2, n_startup_trials=2, probe_eval_every=2,
                                         n_task_profiles=2, mixed_probe=True),
                         defense_options={"early-stopped-vectors": options})
    saved = run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=data, progress=False)
    tuned = saved["defenses"]["early-stopped-vectors"]["tuned"]
    assert sorted(t["options"]["anchors"] for t in tuned["trials"]) == [0, 1, 2, 3, 4]  # each copy count once
    assert all(set(t["options"]) == {"anchors"} for t in tuned["trials"])  # refusal_anchors stays as set
    assert tuned["baseline"]["trainability"]["harm_rate"] is not None and "harm rate" in tuned["objective"]
    for trial in tuned["trials"]:
        probe = trial["trainability"]
        assert probe["n_harmful"] == tuned["data"]["probe_attack"]
        assert trial["objective"] == pytest.approx((trial["probe_harm_rate"] + probe["harm_rate"]) / 2)
    assert len(after) == 6 and all(len(p) == tuned["data"]["probe_prompts"] for p in after)  # baseline + 5 trials
    evaluation = set(prompt_hashes(data.eval_harmful))
    assert not set(prompt_hashes([p for ps in after for p in ps])) & evaluation


@pytest.mark.parametrize("name", ["vaccine", "booster", "repnoise", "adversarial-loss"])
def test_hardening_defences_train_for_their_step_budget(tiny, harmful_pairs, name, monkeypatch):
    from unlearnable.training import UnlearnableTrainer

    steps = []
    step = UnlearnableTrainer.training_step
    monkeypatch.setattr(UnlearnableTrainer, "training_step", lambda self, *a, **k: steps.append(1) or step(self, *a, **k))
    model, tok = tiny
    data = DefenseData(harmful=harmful_pairs[:8], refusals=[Pair(f"Bad {i}?", "I can't help.") for i in range(8)],
                       harmless=[Pair(f"Poem {i}.", "Leaves fall.") for i in range(8)])
    options = {"max_steps": 3, "batch_size": 4}
    defense = DEFENSES.get(name)(**options, **({"backbone": "lora"} if name == "repnoise" else {}))
    defense.harden(model, tok, data, progress=False)
    assert len(steps) == 3  # the budget, not an epoch over the 16 alignment pairs


def test_a_hardening_stops_at_its_own_criterion():
    class Control:
        should_training_stop = False

    cb = StopBelowLoss(0.5)
    assert not cb.on_log(None, None, Control(), logs={"loss": 0.7}).should_training_stop
    assert cb.on_log(None, None, Control(), logs={"loss": 0.4}).should_training_stop


def test_immunize_tunes_each_defence_on_its_own_data_before_any_attack(tiny, harmful_pairs, tmp_path, monkeypatch):
    from test_immunization import tiny_data

    from unlearnable.evaluation import Scorer
    from unlearnable.experiments.immunize import BudgetConfig, ImmunizeConfig, TrainabilityConfig, run_immunize
    from unlearnable.experiments.setup import DataConfig
    from unlearnable.utility import MMLUConfig

    model, tok = tiny
    data = tiny_data(harmful_pairs)
    read: list[tuple[str, list[Pair]]] = []
    harm = Scorer.harm

    def spy(self, m, prompts, desc=""):
        read.append((desc, list(prompts)))
        return harm(self, m, prompts, desc)

    monkeypatch.setattr(Scorer, "harm", spy)
    refusal = Scorer.over_refusal

    def refusal_spy(self, m, prompts, desc=""):
        read.append((desc, list(prompts)))
        return refusal(self, m, prompts, desc)

    monkeypatch.setattr(Scorer, "over_refusal", refusal_spy)
    cfg = ImmunizeConfig(defenses=["none", "adversarial-loss"], align=False, n_curve_eval=4, n_stability_harmless=3,
                         n_defense_harmless=4, data=DataConfig(system_prompt=None), defense_steps=2,
                         budget=BudgetConfig(lrs=[1e-2], samples=[8], steps=2, eval_every=2, batch_size=4),
                         trainability=TrainabilityConfig(steps=2, eval_every=2, batch_size=8, task_repeats=1),
                         tune=TuneConfig(n_trials=3, n_harmless=2, n_benchmark=4, n_startup_trials=2,
                                         probe_eval_every=1),
                         defense_options={"adversarial-loss": {"batch_size": 4}}, mmlu=MMLUConfig(n=4, max_length=64))
    run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=data, progress=False)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    tuned = saved["defenses"]["adversarial-loss"]["tuned"]
    assert tuned["n_trials"] == 3 and tuned["trials"][0]["defaults"] and tuned["trials"][0]["options"] == {"alpha": 0.5}
    chosen = next(t for t in tuned["trials"] if t["number"] == tuned["tuned_trial"])
    assert chosen["feasible"]  # the tuned configuration satisfies the constraint
    assert tuned["probe"]["n_samples"] == tuned["data"]["probe_attack"] < 8  # what the probe had, not its budget
    curve = chosen["probe_curve"]  # the objective: mean harm over the probe's checkpoints (every 1 step here)
    assert [p["step"] for p in curve] == [0, 1, 2]
    assert chosen["probe_harm_rate"] == pytest.approx((curve[1]["harm_rate"] + curve[2]["harm_rate"]) / 2)
    options = saved["defenses"]["adversarial-loss"]["defense"]["options"]
    assert options["alpha"] == (tuned["options"] or tuned["default"])["alpha"]  # used for every later condition
    assert options["max_steps"] == 2  # defense_steps caps the hardening budget
    assert saved["defenses"]["none"]["tuned"]["options"] == {} and "no tunable" in saved["defenses"]["none"]["tuned"]["note"]
    # never the evaluation's prompts: harmful, cross-domain, or the stability's harmless ones
    evaluation = set(prompt_hashes(data.eval_harmful + data.cross_eval + data.harmless[:3]))
    tuning_reads = [p for desc, prompts in read if desc.startswith("tune") for p in prompts]
    assert any("harmless" in desc for desc, _ in read if desc.startswith("tune"))  # over-refusal reads seen too
    assert tuning_reads and not set(prompt_hashes(tuning_reads)) & evaluation
    assert not set(tuned["data"]["prompt_hashes"]) & evaluation
    assert (tmp_path / "out" / "tuning.db").is_file()
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Defence tuning" in report
    row = report.split("Defence tuning")[1].split("<td>adversarial-loss</td><td>alpha</td>")[1].split("</tr>")[0]
    default_alpha, tuned_alpha = (float(c) for c in re.findall(r"<td>(.*?)</td>", row)[:2])  # side by side
    assert default_alpha == tuned["default"]["alpha"] and tuned_alpha == pytest.approx(options["alpha"], rel=1e-2)
    # resumed: the tuning is read back, not run again
    read.clear()
    again = run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=data, progress=False)
    assert again["defenses"]["adversarial-loss"]["tuned"] == tuned
    assert not [d for d, _ in read if d.startswith("tune")]


def test_tune_settings_are_checked_and_the_flag_sets_them():
    from unlearnable.cli import make_parser
    from unlearnable.config import from_dict
    from unlearnable.experiments.immunize import ImmunizeConfig

    with pytest.raises(UnlearnableError, match="heldout"):
        TuneConfig(heldout=1.0)
    args = make_parser("immunize").parse_args(["immunize", "--tune-defenses", "5"])
    assert getattr(args, "tune.n_trials") == 5
    cfg = from_dict(ImmunizeConfig, {"tune": {"n_trials": 2}}, "config")
    assert dataclasses.asdict(cfg)["tune"]["n_trials"] == 2


def test_an_option_the_configuration_sets_is_not_tuned(tmp_path):
    from unlearnable.experiments.tuning import Tuner

    tuner = Tuner(model=None, tokenizer=None, scorer=None, probe=None, verdicts=VerdictConfig(),
                  config=TuneConfig(n_trials=2), out=tmp_path, seed=0, piece=None)
    record = tuner.tune("adversarial-loss", {"alpha": 0.3}, own_data())  # its only tunable option, set
    assert record["options"] == {} and "every one set in its configuration" in record["note"]


def test_a_defence_that_acts_while_fine_tuning_is_tuned_within_trainability(tiny, harmful_pairs, tmp_path,
                                                                           monkeypatch):
    from test_immunization import tiny_data

    from unlearnable.evaluation import Scorer
    from unlearnable.experiments.immunize import BudgetConfig, ImmunizeConfig, TrainabilityConfig, run_immunize
    from unlearnable.experiments.setup import DataConfig

    model, tok = tiny
    data = tiny_data(harmful_pairs)
    task_reads: list[tuple[str, list[Pair]]] = []

    def task(self, m, pairs, desc=""):  # a tiny model learns no ProfileQA in 2 steps: Lisa "loses" the task
        task_reads.append((desc, list(pairs)))
        return {"task_em": 0.0 if "lisa" in desc else 0.8, "n_task": len(pairs)}

    monkeypatch.setattr(Scorer, "task", task)
    cfg = ImmunizeConfig(defenses=["none", "lisa"], align=False, n_curve_eval=4, n_stability_harmless=3,
                         n_defense_harmless=4, data=DataConfig(system_prompt=None), benchmarks=[],
                         budget=BudgetConfig(lrs=[1e-2], samples=[8], steps=2, eval_every=2, batch_size=4),
                         trainability=TrainabilityConfig(steps=2, eval_every=2, batch_size=8, task_repeats=1),
                         tune=TuneConfig(n_trials=2, n_harmless=2, n_startup_trials=2, probe_eval_every=2,
                                         n_task_profiles=2))
    saved = run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=data, progress=False)
    tuned = saved["defenses"]["lisa"]["tuned"]
    assert "trainability" in tuned["constraint"] and tuned["baseline"]["trainability"]["n_task"] == 10
    assert tuned["baseline"]["trainability"]["task_em"] == 0.8
    for trial in tuned["trials"]:  # stable before any fine-tune, yet outside the constraint: the task is lost
        assert trial["trainability"]["task_em"] == 0.0 and trial["deltas"]["task_em_ratio"] == 0.0
        assert not trial["feasible"]
    assert tuned["options"] == {} and tuned["note"].startswith("no trial within the constraint")
    tuning_tasks = [p for desc, pairs in task_reads if desc.startswith("tune") for p in pairs]
    assert tuning_tasks and not set(prompt_hashes(tuning_tasks)) & set(prompt_hashes(data.task))
    assert not set(tuned["data"]["task_prompt_hashes"]) & set(prompt_hashes(data.task))  # never the evaluation's
    report = (tmp_path / "out" / "report.html").read_text()
    assert "probe task EM after the user" in report
    # the undefended probe kept before over-refusal was scored after it is run again when a tuning reads it
    runs = tmp_path / "out" / "runs"
    probe = json.loads((runs / "none" / "tuning-baseline-trainability.json").read_text())
    assert "over_refusal" in probe
    (runs / "none" / "tuning-baseline-trainability.json").write_text(
        json.dumps({k: v for k, v in probe.items() if k != "over_refusal"}))
    (runs / "lisa" / "tuned.json").unlink()
    run_immunize(cfg, tmp_path / "out", model=model, tokenizer=tok, data=data, progress=False)
    again = json.loads((runs / "none" / "tuning-baseline-trainability.json").read_text())
    assert again["over_refusal"] == probe["over_refusal"]


def test_tuning_a_hardening_defence_attacks_with_the_aligned_model_parked(tiny_dir, harmful_pairs, tmp_path,
                                                                           monkeypatch):
    """Two model copies at most: while a tuning trial's probe attack trains on a hardened copy, the aligned model
    waits on disk (the model loads from a folder, so it can be loaded again), as in the sweep's own attacks."""
    import gc

    from test_immunization import tiny_data

    from unlearnable.attacks.base import Attack
    from unlearnable.experiments.immunize import BudgetConfig, ImmunizeConfig, TrainabilityConfig, run_immunize
    from unlearnable.experiments.setup import DataConfig
    from unlearnable.utility import MMLUConfig

    def models() -> list:
        gc.collect()
        return [o for o in gc.get_objects() if type(o).__name__.endswith("ForCausalLM")]

    earlier = models()  # other tests' models in this process, kept referenced so that no id is reused
    known = {id(m) for m in earlier}
    live: list[int] = []
    run = Attack.run

    def counting(self, defense, model, *args, **kwargs):
        live.append(sum(id(m) not in known for m in models()))
        return run(self, defense, model, *args, **kwargs)

    monkeypatch.setattr(Attack, "run", counting)
    monkeypatch.setenv("UNLEARNABLE_SKIP_MODEL_CHECK", "1")
    cfg = ImmunizeConfig(model=str(tiny_dir), defenses=["none", "adversarial-loss"], align=False, n_curve_eval=4,
                         n_stability_harmless=3, n_defense_harmless=4, data=DataConfig(system_prompt=None),
                         defense_steps=2, budget=BudgetConfig(lrs=[1e-2], samples=[8], steps=2, eval_every=2,
                                                              batch_size=4),
                         trainability=TrainabilityConfig(steps=2, eval_every=2, batch_size=8, task_repeats=1),
                         tune=TuneConfig(n_trials=2, n_harmless=2, n_benchmark=4, n_startup_trials=2,
                                         probe_eval_every=1),
                         defense_options={"adversarial-loss": {"batch_size": 4}}, mmlu=MMLUConfig(n=4, max_length=64))
    run_immunize(cfg, tmp_path / "out", data=tiny_data(harmful_pairs), progress=False)
    assert len(live) >= 4 and max(live) == 1  # the model being attacked; its training copy is made inside
