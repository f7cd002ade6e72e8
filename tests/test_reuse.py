"""Reusing a defence's runs from an earlier immunize sweep (``immunize --reuse-defenses``)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from unlearnable.errors import UnlearnableError
from unlearnable.experiments.reuse import defense_key

optuna = pytest.importorskip("optuna")


def sweep(**over):
    base = {"model": None, "seed": 0, "defenses": ["none", "lisa"], "defense_options": {}, "attacker": "search",
            "tune": {"n_trials": 0, "heldout": 0.4}, "threat_models": [], "search": {"n_trials": 16, "storage": None},
            "eval": {"max_new_tokens": 24}}
    return {**base, **over}


def test_the_key_reads_a_real_sweep_config():
    from unlearnable.experiments.immunize import ImmunizeConfig
    from unlearnable.experiments.setup import sweep_config
    from unlearnable.experiments.tuning import TuneConfig

    base = sweep_config(ImmunizeConfig().seeded())
    more = sweep_config(ImmunizeConfig(defenses=["none", "vaccine"], defense_options={"vaccine": {"rho": 1.0}},
                                       tune=TuneConfig(n_trials=4)).seeded())
    assert defense_key(base, "none") == defense_key(more, "none")
    assert defense_key(base, "security-vectors") != defense_key(more, "security-vectors")  # tuned there
    assert defense_key(base, "none") != defense_key(sweep_config(ImmunizeConfig(seed=1).seeded()), "none")


def test_a_defence_s_key_ignores_the_other_defences_and_nothing_it_depends_on():
    a = sweep()
    others = sweep(defenses=["none", "vaccine", "booster"], defense_options={"vaccine": {"rho": 2.0}},
                   search={"n_trials": 16, "storage": "journal:/x.log"})
    assert defense_key(a, "none") == defense_key(others, "none")
    assert defense_key(a, "lisa") != defense_key(sweep(defense_options={"lisa": {"rho": 2.0}}), "lisa")
    # the trial count is not in the key: a source with fewer trials is extended (Source.ran), one with more is not
    assert defense_key(a, "none") == defense_key(sweep(search={"n_trials": 8}), "none")
    for changed in ({"seed": 1}, {"search": {"n_trials": 16, "sampler_seed": 1}}, {"eval": {"max_new_tokens": 256}},
                    {"threat_models": ["fine-tuning-as-a-service"]}):
        assert defense_key(a, "none") != defense_key(sweep(**changed), "none"), changed
    # tuning settings count for a defence that is tuned, not for one with nothing to tune
    tuned = sweep(tune={"n_trials": 4, "heldout": 0.4})
    assert defense_key(a, "none") == defense_key(tuned, "none")
    assert defense_key(a, "lisa") != defense_key(tuned, "lisa")
    assert defense_key(tuned, "lisa") != defense_key(sweep(tune={"n_trials": 4, "heldout": 0.2}), "lisa")


def test_a_source_that_is_not_an_immunize_sweep_is_a_one_line_error(tmp_path):
    from test_cli import assert_clean_error
    from test_cli_errors import assert_nothing_written, cli

    (tmp_path / "trade").mkdir()
    (tmp_path / "trade" / "run.json").write_text(json.dumps({"kind": "unlearnable-tradeoff"}))
    (tmp_path / "cut").mkdir()  # a sweep cut off before it wrote its results
    (tmp_path / "cut" / "run.json").write_text(json.dumps({"kind": "unlearnable-immunize", "config_hash": "abc",
                                                              "config": {}}))
    for src, message in ((tmp_path / "missing", "no readable run.json"), (tmp_path / "trade", "tradeoff run"),
                         (tmp_path / "cut", "has not finished")):
        assert_clean_error(cli("immunize", "--out", str(tmp_path / "out"), "--reuse-defenses", str(src)), message)
        assert_nothing_written(tmp_path / "out")


def search_config(defense_options, n_trials=2):
    from unlearnable.experiments.immunize import BudgetConfig, ImmunizeConfig, TrainabilityConfig
    from unlearnable.experiments.search import AttackerSearchConfig
    from unlearnable.experiments.setup import DataConfig
    from unlearnable.threat_models import SearchSpace, ServiceConfig

    space = SearchSpace(lr_min=1e-3, lr_max=3e-2, steps=[2], batch_sizes=[4], samples=[8], backbones=["lora"],
                        lora_ranks=[4], schedulers=["constant"], attacks=["harmful-sft"])
    return ImmunizeConfig(
        defenses=["none"], attacker="search", align=False, n_curve_eval=4, n_stability_harmless=3,
        n_defense_harmless=3, data=DataConfig(system_prompt=None), threat_models=["service"],
        defense_options=defense_options, benchmarks=[],
        budget=BudgetConfig(lrs=[1e-2], samples=[8], steps=2, eval_every=2, batch_size=4),
        search=AttackerSearchConfig(n_trials=n_trials, n_startup_trials=1, eval_every=2, seeds=[0, 1],
                                    stop_at_ceiling=False, max_harmless_loss_rise=None, space=space),
        trainability=TrainabilityConfig(steps=2, eval_every=2, batch_size=8, task_repeats=1),
        service=ServiceConfig(steps=[2], max_steps=2, batch_sizes=[4], samples=[8], attacks=["harmful-sft"]))


def test_none_is_copied_from_an_earlier_sweep_and_not_run_again(tiny, harmful_pairs, tmp_path, monkeypatch):
    from test_immunization import tiny_data

    from unlearnable.attacks.base import Attack
    from unlearnable.experiments.immunize import run_immunize

    config = search_config

    run = lambda cfg, out, **kw: run_immunize(cfg, tmp_path / out, model=tiny[0], tokenizer=tiny[1],  # noqa: E731
                                              data=tiny_data(harmful_pairs), progress=False, **kw)
    first = run(config({}), "first")
    calls, attack_run = [], Attack.run
    monkeypatch.setattr(Attack, "run", lambda self, *a, **kw: calls.append(1) or attack_run(self, *a, **kw))
    # another sweep: another defence's options differ, none's settings do not
    second = run(config({"vaccine": {"rho": 2.0}}), "second", reuse=[tmp_path / "first"])
    assert calls == []  # none's search, seeds and cross-domain run were copied, not run
    assert second["attacker_search"]["none"] == first["attacker_search"]["none"]
    def unmarked(runs):  # each sweep stamps its own config hash; the copies name their source
        return {k: {f: v for f, v in r.items() if f not in ("reused_from", "config_hash")} for k, r in runs.items()}

    assert unmarked(second["defenses"]["none"]["runs"]) == unmarked(first["defenses"]["none"]["runs"])
    assert second["defenses"]["none"]["reused_from"] == [str(tmp_path / "first")]
    report = (tmp_path / "second" / "report.html").read_text()
    assert "Runs copied from other sweeps" in report and str(tmp_path / "first") in report
    stored = json.loads(next((tmp_path / "second" / "runs" / "none").glob("search-*.json")).read_text())
    assert stored["reused_from"] == str(tmp_path / "first")
    studies = optuna.get_all_study_summaries(storage=f"sqlite:///{tmp_path / 'second' / 'attacker_search.db'}")
    assert [(s.study_name, s.n_trials) for s in studies] == [("none@fine-tuning-as-a-service", 2)]
    # a copy cut off midway (its marker left, one piece and the study gone) is discarded and made again
    (tmp_path / "second" / "results.json").unlink()
    (tmp_path / "second" / "runs" / "none" / ".copying").touch()
    next((tmp_path / "second" / "runs" / "none").glob("search-*.json")).unlink()
    optuna.delete_study(study_name="none@fine-tuning-as-a-service",
                        storage=f"sqlite:///{tmp_path / 'second' / 'attacker_search.db'}")
    again = run(config({"vaccine": {"rho": 2.0}}), "second", reuse=[tmp_path / "first"])
    assert calls == [] and again["attacker_search"]["none"] == first["attacker_search"]["none"]
    assert not (tmp_path / "second" / "runs" / "none" / ".copying").exists()
    # resumed without --reuse-defenses, a cut-off copy is discarded all the same, and none runs here
    (tmp_path / "second" / "results.json").unlink()
    (tmp_path / "second" / "runs" / "none" / ".copying").touch()
    alone = run(config({"vaccine": {"rho": 2.0}}), "second")
    assert calls and "reused_from" not in alone["defenses"]["none"]
    assert alone["attacker_search"]["none"]["worst_case"] == first["attacker_search"]["none"]["worst_case"]
    calls.clear()
    # a sweep that keeps runs of its own keeps them; one that changes what none's runs depend on runs none itself
    assert "reused_from" not in run(config({}), "first", reuse=[tmp_path / "second"])["defenses"]["none"]
    third = run(dataclasses.replace(config({}), seed=1), "third", reuse=[tmp_path / "first"])
    assert calls and "reused_from" not in third["defenses"]["none"]


def test_a_sweep_s_own_folder_is_no_source(tmp_path):
    from unlearnable.experiments.reuse import read_sources

    with pytest.raises(UnlearnableError, match="own folder"):
        read_sources([tmp_path], tmp_path)


def test_an_older_sweep_without_threat_models_is_read_and_not_reused(tmp_path):
    """A results file from before threat models (one search per defence, no by_threat_model, older config keys)
    loads as a source; its runs are not taken, since it did not run them as a sweep of today would."""
    from unlearnable.experiments.reuse import Source, _finished_studies

    old_config = {"model": None, "seed": 0, "defenses": ["none"], "attacker": "search", "search": {"n_trials": 16}}
    (tmp_path / "run.json").write_text(json.dumps({"kind": "unlearnable-immunize", "config_hash": "h",
                                                   "config": old_config}))
    (tmp_path / "results.json").write_text(json.dumps({
        "config_hash": "h", "defenses": {"none": {"runs": {}}}, "precision": "bf16",
        "attacker_search": {"none": {"trials": [], "worst_case": None, "n_trials": 16}}}))
    source = Source.read(tmp_path)
    today = {**old_config, "threat_models": [], "tune": {"n_trials": 0}, "defense_options": {}}
    assert source.ran("none", today, {"precision": "bf16"})  # the same settings, as far as the old file says
    assert not _finished_studies(source, "none")  # but no study of today's names to copy: run here


@pytest.mark.parametrize("recorded, reused", [(None, False), (1, False), (2, True)])
def test_a_defence_s_runs_from_an_earlier_revision_are_not_reused(tmp_path, recorded, reused):
    """safety-data-mix's runs from before its refusal rows stopped taking a step budget's steps (revision 2) measure
    another defence: never copied, whatever the settings."""
    from unlearnable.defenses import DEFENSES
    from unlearnable.experiments.reuse import Source

    config = sweep(defenses=["none", "safety-data-mix"], attacker="grid")
    described = DEFENSES.get("safety-data-mix")().describe()
    assert described["revision"] == 2 and "revision" not in DEFENSES.get("none")().describe()
    if recorded is None:
        del described["revision"]
    else:
        described["revision"] = recorded
    (tmp_path / "run.json").write_text(json.dumps({"kind": "unlearnable-immunize", "config_hash": "h",
                                                   "config": config}))
    (tmp_path / "results.json").write_text(json.dumps({
        "config_hash": "h", "precision": "bf16",
        "defenses": {"none": {"defense": DEFENSES.get("none")().describe(), "runs": {}},
                     "safety-data-mix": {"defense": described, "runs": {}}}}))
    source = Source.read(tmp_path)
    assert source.ran("safety-data-mix", config, {"precision": "bf16"}) is reused
    assert source.ran("none", config, {"precision": "bf16"})  # the other defences as before


def test_a_revised_defence_keys_its_revision_into_the_folder_and_not_into_the_others_keys():
    """A folder made before a defence's revision is another sweep (never resumed as this one); the other
    defences' keys, which --reuse-defenses compares, do not move with it."""
    from unlearnable.defenses import DEFENSES
    from unlearnable.experiments.immunize import ImmunizeConfig
    from unlearnable.experiments.setup import sweep_config

    assert [DEFENSES.get(n).revision for n in ("early-stopped-vectors", "adaptive-vectors", "varied-vectors",
                                               "negated-vectors", "lisa")] == [2, 2, 2, 1, 1]
    revised = sweep_config(ImmunizeConfig(defenses=["none", "safety-data-mix", "negated-vectors"]).seeded())
    plain = sweep_config(ImmunizeConfig(defenses=["none", "lisa"]).seeded())
    assert revised["revisions"] == {"safety-data-mix": 2} and "revisions" not in plain
    assert defense_key(revised, "none") == defense_key(plain, "none")
    assert defense_key(revised, "safety-data-mix") == defense_key({**revised, "revisions": {}}, "safety-data-mix")


def test_a_search_with_more_trials_extends_a_finished_one(tiny, harmful_pairs, tmp_path, monkeypatch):
    from test_immunization import tiny_data

    from unlearnable.attacks.base import Attack
    from unlearnable.experiments.immunize import run_immunize

    run = lambda cfg, out, **kw: run_immunize(cfg, tmp_path / out, model=tiny[0], tokenizer=tiny[1],  # noqa: E731
                                              data=tiny_data(harmful_pairs), progress=False, **kw)
    run(search_config({}, n_trials=2), "two")
    calls, attack_run = [], Attack.run
    monkeypatch.setattr(Attack, "run", lambda self, *a, **kw: calls.append(1) or attack_run(self, *a, **kw))
    # runs kept for another worst case (as if the extended search had moved it): made again, not taken over
    kept = tmp_path / "two" / "runs" / "none"
    for piece, field, other in (("attack-search-service-seed1", "search_trial", 99), ("cross-domain", "settings", {})):
        stored = json.loads((kept / f"{piece}.json").read_text())
        (kept / f"{piece}.json").write_text(json.dumps({**stored, field: other}))
    three = run(search_config({}, n_trials=3), "three", reuse=[tmp_path / "two"])
    found = three["attacker_search"]["none"]["by_threat_model"]["fine-tuning-as-a-service"]
    assert found["n_trials"] == 3 and three["defenses"]["none"]["reused_from"] == [str(tmp_path / "two")]
    worst = found["worst_case"]["trial"]
    runs = three["defenses"]["none"]["runs"]
    assert all(runs[f"attack-search-service-seed{s}"]["search_trial"] == worst for s in (0, 1))
    assert len(calls) == 3  # the new trial, the seed run and the cross-domain run
    studies = optuna.get_all_study_summaries(storage=f"sqlite:///{tmp_path / 'three' / 'attacker_search.db'}")
    assert [s.n_trials for s in studies] == [3]
    # a sweep with fewer trials than the source is not cut down from it: it runs its own
    calls.clear()
    fewer = run(search_config({}, n_trials=1), "one", reuse=[tmp_path / "three"])
    assert calls and "reused_from" not in fewer["defenses"]["none"]


def test_a_kept_run_of_another_worst_case_is_made_again():
    from unlearnable.attacks.settings import AttackSettings
    from unlearnable.experiments.immunize import _same_settings

    settings = AttackSettings(lr=1e-3, steps=4, attack_options={"styles": ("a", "b")})
    kept = json.loads(json.dumps({"settings": dataclasses.asdict(settings)}))
    assert _same_settings(kept, settings) and _same_settings({}, settings)
    assert not _same_settings(kept, dataclasses.replace(settings, lr=2e-3))


def test_a_defence_run_under_defaults_that_changed_is_another_defence_key():
    import dataclasses as dc

    from unlearnable.experiments.immunize import ImmunizeConfig
    from unlearnable.experiments.reuse import defense_key
    from unlearnable.experiments.setup import sweep_config

    unset = sweep_config(ImmunizeConfig(defenses=["none", "adaptive-vectors"]))
    assert set(unset["changed_defaults"]["adaptive-vectors"]) == {"flagger", "refit", "reject_above"}
    before = {k: v for k, v in unset.items() if k != "changed_defaults"}  # a folder keyed before the change
    assert defense_key(unset, "adaptive-vectors") != defense_key(before, "adaptive-vectors")
    assert defense_key(unset, "none") == defense_key(before, "none")  # the other defences' runs are unchanged
    pinned = ImmunizeConfig(defenses=["adaptive-vectors"], defense_options={"adaptive-vectors": {
        "flagger": "refusal", "refit": "heldout", "reject_above": 1.0}})
    assert "changed_defaults" not in sweep_config(pinned)
    assert "changed_defaults" not in sweep_config(dc.replace(pinned, defenses=["none", "repnoise"]))
