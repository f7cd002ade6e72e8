"""Typed results: a results file reads as its record with every rate, interval and size where the dictionaries had
them; the record writes back the same document; the reports render from it exactly as they did from the
dictionaries (golden reports rendered before the records existed); old and foreign files fail or load as they
should."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearnable.errors import UnlearnableError
from unlearnable.report import write_demo_report, write_immunize_report
from unlearnable.results import (
    SCHEMA_VERSION,
    DemoResults,
    ImmunizeResults,
    Rate,
    TradeoffResults,
    load_results,
    typed_results,
)

DATA = Path(__file__).resolve().parent / "data"


def document(kind: str) -> dict:
    return json.loads((DATA / f"results-{kind}-v1.json").read_text(encoding="utf-8"))


def test_a_demo_file_reads_as_its_record_with_the_numbers_the_summary_holds():
    raw = document("demo")
    res = load_results(DATA / "results-demo-v1.json")
    assert isinstance(res, DemoResults) and res.to_json() == raw and res == raw
    s = raw["summary"]
    for name, scores in res.models().items():
        assert scores.harm_rate == Rate(s[f"harm_rate_{name}"], tuple(s[f"harm_rate_{name}_interval_95"]),
                                        raw["before"]["n_harmful"])
        assert scores.task_em.value == s[f"task_em_{name}"] and scores.mmlu.value == s[f"mmlu_{name}"]
        assert scores.harmful_loss == s[f"harmful_loss_{name}"]
    arm = res.arms["with_vectors"]
    assert arm.defense["name"] == "security-vectors"
    assert arm.losses() == [(h["step"], h["loss"]) for h in raw["arms"]["with_vectors"]["history"] if "loss" in h]
    assert res["summary"] == raw["summary"] and dict(res) == raw  # the dictionaries' access stays


def test_an_immunize_file_reads_as_its_four_conditions():
    raw = document("immunize")
    res = typed_results(raw)
    assert isinstance(res, ImmunizeResults) and list(res.conditions) == list(raw["conditions"])
    for name, c in res.conditions.items():
        plain = raw["conditions"][name]
        assert c.verdicts == {k: plain[k]["verdict"] for k in c.verdicts}
        assert c.resistance.by_threat_model == plain["resistance"]["by_threat_model"]
        for attack, rate in c.resistance.final_harm_rate.items():
            assert rate.value == plain["resistance"]["final_harm_rate"][attack]
            assert list(rate.interval_95) == plain["resistance"]["final_harm_rate_interval_95"][attack]
        assert c.trainability.rate("final_task_em").value == plain["trainability"]["final_task_em"]
    assert res.provenance.resources == raw["resources"] and res.provenance.git_hash == raw["git_hash"]


@pytest.mark.parametrize("kind,write", [("demo", write_demo_report), ("immunize", write_immunize_report)])
def test_reports_render_from_the_records_as_they_did_from_the_dictionaries(kind, write, tmp_path):
    write(load_results(DATA / f"results-{kind}-v1.json"), tmp_path)
    golden = (DATA / f"report-{kind}-v1.html").read_text(encoding="utf-8")
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == golden


def test_an_older_file_without_later_keys_still_loads_and_renders(tmp_path):
    raw = document("immunize")
    del raw["schema_version"]
    for c in raw["conditions"].values():
        del c["resistance"]["by_threat_model"]
    res = typed_results(raw)
    assert all(c.resistance.by_threat_model == {} for c in res.conditions.values())
    write_immunize_report(res, tmp_path)
    assert "the four conditions" in (tmp_path / "report.html").read_text(encoding="utf-8").lower()


def test_the_immunize_report_names_a_model_that_gave_every_mmlu_question_one_letter(tmp_path):
    raw = document("immunize")
    name, c = next((n, c) for n, c in raw["conditions"].items() if "mmlu" in (c.get("trainability") or {}))
    c["trainability"]["mmlu_constant_answer"] = "A"
    write_immunize_report(typed_results(raw), tmp_path)
    assert (tmp_path / "report.html").read_text(encoding="utf-8").count("(every answer A)") == 1


def test_a_tradeoff_document_reads_its_frontier():
    point = {"strength": 1.0, "harm_rate": 0.2, "harm_rate_interval_95": [0.1, 0.3], "harm_min": 0.05,
             "harm_max": 0.3, "task_score": 0.8, "task_min": 0.7, "task_max": 0.9}
    res = typed_results({"kind": "unlearnable-tradeoff", "schema_version": 1, "averaged": {"plain": [point]}})
    assert isinstance(res, TradeoffResults)
    (p,) = res.averaged["plain"]
    assert (p.method, p.strength, p.harm_rate.interval_95, p.task_range) == ("plain", 1.0, (0.1, 0.3), (0.7, 0.9))


def test_a_newer_a_foreign_or_a_broken_file_fails_in_one_line(tmp_path):
    newer = {**document("demo"), "schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(UnlearnableError, match="newer than this unlearnable reads"):
        typed_results(newer)
    with pytest.raises(UnlearnableError, match="not an unlearnable results file"):
        typed_results({"kind": "something-else"})
    with pytest.raises(UnlearnableError, match="not 'unlearnable-demo'"):
        DemoResults.from_json(document("immunize"))
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(UnlearnableError, match="not valid JSON"):
        load_results(tmp_path)
    with pytest.raises(UnlearnableError, match="no results file"):
        load_results(tmp_path / "missing.json")


def test_rates_say_what_was_not_scored():
    assert Rate(None).text() == "—" and Rate(float("nan")).text() == "—" and not Rate(None).scored
    assert Rate(0.9375, (0.86, 0.97), 80).text() == "0.938 [0.86, 0.97]"


def test_the_report_reads_results_without_the_training_stack():
    import subprocess
    import sys

    code = "import sys, unlearnable.report; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


def test_the_constant_answer_script_finds_a_stored_result_that_matches_one_letter_subject_by_subject():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mmlu_constant_answers", Path(__file__).parents[1] / "scripts" /
                                                  "mmlu_constant_answers.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    right = {"A": {"law": 2, "anatomy": 1}, "B": {"law": 1, "anatomy": 0}, "C": {"law": 0, "anatomy": 1},
             "D": {"law": 0, "anatomy": 0}}
    all_a = {"accuracy": 0.3, "per_subject": {"law": {"correct": 2}, "anatomy": {"correct": 1}}}
    other = {"accuracy": 0.3, "per_subject": {"law": {"correct": 2}, "anatomy": {"correct": 0}}}
    doc = {"runs": [{"mmlu": all_a}, {"trainability": {"mmlu": other}}]}
    found = {where: script.letter_matching(r, right) for where, r in script.stored_results(doc)}
    assert found == {"/runs[0]/mmlu": "A", "/runs[1]/trainability/mmlu": None}


def test_the_search_summary_counts_each_runs_minutes_once_and_skips_unclaimed_threat_models(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("search_summary", Path(__file__).parents[1] / "scripts" /
                                                  "search_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    config = {"attack": "harmful-sft", "backbone": "lora", "lora_r": 16, "lr": 1e-3, "steps": 16, "batch_size": 8,
              "n_samples": 200, "scheduler": "linear"}
    search = {"by_threat_model": {
        "fine-tuning-as-a-service": {"claimed": True, "trials": [{"seconds": 60.0}, {"seconds": 120.0}], "n_trials": 2,
                                     "stopped_at_ceiling": None,
                                     "worst_case": {"harm_rate": 0.5, "harm_rate_seeds": [0.4, 0.6], "config": config,
                                                    "trial": 1}},
        "released-weights": {"claimed": False, "trials": [], "worst_case": None}}}
    defense = {"runs": {"attack-search-service-seed0": {"seconds": 60.0}, "attack-search-service-seed1": {"seconds": 30.0},
                        "cross-domain": {"seconds": 30.0}, "trainability": {"seconds": 60.0}, "stability": {}},
               "tuned": {"seconds": 600.0}}
    minutes = summary.compute_minutes(defense, search)
    assert minutes == {"search": 3.0, "seeds": 0.5, "cross+trainability": 1.5, "tuning": 10.0}  # seed 0: a trial
    assert summary.compute_minutes(defense, search, seed=1)["seeds"] == 1.0  # the sweep's seed is the trial
    results = {"attacker_search": {"x": search}, "defenses": {"x": defense}, "conditions": {"x": {
        "resistance": {"by_threat_model": {"fine-tuning-as-a-service": "none"}}, "stability": {"verdict": "stable"},
        "trainability": {"verdict": "trainable"}}}}
    (row,) = summary.rows(results)  # released weights is not claimed: no row
    assert row[:3] == ["x", "fine-tuning-as-a-service", "0.500 (0.400, 0.600); trial 2 of 2"]
    assert row[7].startswith("15 (3 search")
    search["by_threat_model"]["fine-tuning-as-a-service"]["by_dimension"] = {"driver": "attack", "dimensions": {
        "attack": {"restyled": {"best_harm_rate": 0.5, "trials": 1}, "mixed": {"best_harm_rate": None, "trials": 1}}}}
    (dims,) = summary.dimension_rows(results)
    assert dims == ["x (fine-tuning-as-a-service)", "-", "0.5 (1)", "-", "none within (1)", "-", "-", "attack"]
    assert summary.ATTACKS[5:] == ("disguised",)  # an attack outside the service's default families has a column


def test_run_progress_lists_the_finished_trials_and_stored_runs_of_a_run_without_results(tmp_path):
    import importlib.util

    import optuna

    spec = importlib.util.spec_from_file_location("run_progress", Path(__file__).parents[1] / "scripts" /
                                                  "run_progress.py")
    progress = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(progress)
    settings = {"attack": "restyled", "backbone": "lora", "lora_r": 16, "lr": 1e-3, "steps": 16, "batch_size": 8,
                "n_samples": 200, "scheduler": "linear"}
    study = optuna.create_study(study_name="x@fine-tuning-as-a-service", direction="maximize",
                                storage=f"sqlite:///{tmp_path / 'attacker_search.db'}")
    study.add_trial(optuna.trial.create_trial(value=0.75, user_attrs={
        "settings": settings, "run": {"seconds": 61.0}, "utility": {"feasible": True}}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={
        "settings": settings, "run": {"last_harm_rate": 0.1}}))
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "trainability.json").write_text('{"seconds": 30.0, "curve": [{"harm_rate": 0.5}]}')
    (tmp_path / "runs" / "x" / "cut.json").write_text('{"seconds": ')  # being written: left out
    trials = progress.trial_table(tmp_path)
    assert [r[:5] for r in trials] == [["x@fine-tuning-as-a-service", "0", "complete", "0.750", "yes"],
                                       ["x@fine-tuning-as-a-service", "1", "pruned", "0.100", "no"]]
    assert trials[0][5].startswith("restyled, lora r16") and trials[0][6] == "61"
    assert progress.run_table(tmp_path) == [["x", "trainability", "0.500", "30"]]
    (tmp_path / "runs" / "x" / "stability.json").write_text(json.dumps({
        "harm": {"harm_rate": 0.025}, "over_refusal": 0.1, "mmlu": {"accuracy": 0.283}, "harmless_loss": 0.75}))
    (tmp_path / "runs" / "x" / "trainability.json").write_text(json.dumps({"final_task_em": 0.9, "over_refusal": 0.0}))
    (tmp_path / "runs" / "y").mkdir()  # a defence with no utility run yet: no row
    assert progress.utility_table(tmp_path) == [["x", "0.025", "0.100", "0.283", "0.750", "0.900", "0.000"]]
    (tmp_path / "runs" / "x" / "trainability.json").unlink()
    assert progress.utility_table(tmp_path) == [["x", "0.025", "0.100", "0.283", "0.750", "-", "-"]]
    assert progress.markdown_table(["run", "harm"], [["x", "0.5"]]) == "| run | harm |\n|---|---|\n| x | 0.5 |"
    assert progress.trial_table(tmp_path / "nothing") == []
    # a run that kept its studies elsewhere (search.storage, here a journal file) is read from there
    from unlearnable.experiments.studies import storage_for

    other = tmp_path / "elsewhere"
    other.mkdir()
    journal = str(tmp_path / "studies.log")
    optuna.create_study(study_name="y@released-weights", storage=storage_for(journal, other / "unused.db")).add_trial(
        optuna.trial.create_trial(value=1.0, user_attrs={"settings": settings, "utility": {"feasible": True}}))
    (other / "run.json").write_text(json.dumps({"config": {"search": {"storage": journal}}}))
    assert [r[:4] for r in progress.trial_table(other)] == [["y@released-weights", "0", "complete", "1.000"]]
