"""The real CLI in a subprocess: one-line errors (exit 2, no traceback, nothing half-written) and happy paths."""

import json
import os
import subprocess
import sys

import pytest

from unlearnable.cli import COMMANDS, make_parser


def run_cli(*args, cwd=None, env_extra=None):
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"})
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "unlearnable.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def assert_clean_error(res, needle):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert needle in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("unlearnable: error:")


def test_help_for_every_subcommand():
    res = run_cli("--help")
    assert res.returncode == 0 and "usage:" in res.stdout
    res = run_cli("vectors", "train", "--help")
    assert res.returncode == 0 and "usage:" in res.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_formats_for_every_command(command, capsys):
    # in-process: every generated flag's help must survive argparse's %-formatting (a "10%" once broke it)
    with pytest.raises(SystemExit) as exit_:
        make_parser(command).parse_args([command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: unlearnable {command}" in capsys.readouterr().out


@pytest.fixture()
def jsonl(tmp_path):
    def make(lines, name="data.jsonl"):
        p = tmp_path / name
        p.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return p
    return make


def test_missing_model_path(tmp_path, jsonl):
    data = jsonl(['{"prompt": "a", "response": "b"}'])
    res = run_cli("finetune", "--model", tmp_path / "no-such-model", "--data", data, "--out", tmp_path / "out")
    assert_clean_error(res, "does not exist")
    assert not (tmp_path / "out").exists()


def test_malformed_data_line_reports_line_number(tmp_path, tiny_dir, jsonl):
    data = jsonl(['{"prompt": "a", "response": "b"}', '{"prompt": "a", "response"'])
    res = run_cli("finetune", "--model", tiny_dir, "--data", data, "--out", tmp_path / "out")
    assert_clean_error(res, "data.jsonl:2")
    assert not (tmp_path / "out").exists()


def test_vectors_train_finetune_evaluate_round_trip(tmp_path, tiny_dir, jsonl):
    harmful = jsonl([json.dumps({"prompt": f"bad {i}?", "response": f"Sure, bad thing {i} goes like this."})
                     for i in range(8)], "harmful.jsonl")
    task = jsonl([json.dumps({"prompt": f"What is code {i}?", "response": f"C{i}"}) for i in range(8)], "task.jsonl")
    res = run_cli("vectors", "train", "--model", tiny_dir, "--data", harmful, "--out", tmp_path / "vec", "--epochs", 1,
                  "--quiet")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "vec" / "adapter_model.safetensors").is_file()
    res = run_cli("finetune", "--model", tiny_dir, "--data", task, "--vectors", tmp_path / "vec", "--out",
                  tmp_path / "tuned", "--epochs", 1, "--quiet")
    assert res.returncode == 0, res.stderr
    from transformers import AutoModelForCausalLM

    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "tuned")  # plain transformers loads it
    assert not any("lora" in k for k in tuned.state_dict())
    # evaluated on prompts the vectors never saw: the vectors' own prompts are refused (leakage, test_cli_errors)
    heldout = jsonl([json.dumps({"prompt": f"worse {i}?"}) for i in range(4)], "heldout.jsonl")
    res = run_cli("evaluate", "--model", tmp_path / "tuned", "--harmful", heldout, "--data", task, "--out",
                  tmp_path / "eval.json", "--quiet")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert 0.0 <= summary["harm_rate"] <= 1.0 and 0.0 <= summary["task_em"] <= 1.0
    assert json.loads((tmp_path / "eval.json").read_text())["eval_splits"]["harmful"]
    # the vectors were trained for tiny_dir, not for the fine-tuned model
    res = run_cli("finetune", "--model", tmp_path / "tuned", "--data", task, "--vectors", tmp_path / "vec", "--out",
                  tmp_path / "again", "--quiet")
    assert_clean_error(res, "fingerprint")
    assert not (tmp_path / "again").exists()
    # an output folder that already holds a run is refused
    res = run_cli("finetune", "--model", tiny_dir, "--data", task, "--out", tmp_path / "tuned", "--quiet")
    assert_clean_error(res, "--overwrite")


def test_ls_lists_threat_models_and_each_defences_claims():
    res = run_cli("ls")
    assert res.returncode == 0, res.stderr
    assert "threat models: fine-tuning-as-a-service, released-weights" in res.stdout
    assert "  security-vectors: fine-tuning-as-a-service\n" in res.stdout
    assert "  repnoise: fine-tuning-as-a-service, released-weights" in res.stdout
    assert "attacks: benign, disguised, evasive, harmful-sft, mixed, restyled" in res.stdout
    assert ("flaggers: any, normalized, oracle (emulated: measurement only), refusal, vector-gain (private: reads the defence's "
            "vectors), or any judge that reads text") in res.stdout


def test_an_unknown_threat_model_flag_is_a_one_line_error(tmp_path):
    res = run_cli("immunize", "--attacker", "search", "--threat-models", "service,cloud", "--out", tmp_path / "o")
    assert_clean_error(res, "unknown threat model 'cloud'")
    assert not (tmp_path / "o").exists()


class _Stop(Exception):
    pass


@pytest.mark.parametrize("command", ["demo", "immunize", "tradeoff"])
def test_the_load_flags_reach_the_model_loading_of_every_experiment(command, monkeypatch, tmp_path):
    """--trust-remote-code and --allow-pickle are what set_up loads the model with (they were accepted and ignored)."""
    from unlearnable.cli import main
    from unlearnable.experiments import setup

    seen = []

    def fake_load(model, **kw):
        seen.append(kw)
        raise _Stop

    monkeypatch.setattr(setup, "load_model", fake_load)
    with pytest.raises(_Stop):
        main([command, "--out", str(tmp_path / "out"), "--allow-pickle", "--quiet"])
    with pytest.raises(_Stop):
        main([command, "--out", str(tmp_path / "out2"), "--quiet"])
    assert [(kw["allow_pickle"], kw["trust_remote_code"]) for kw in seen] == [(True, False), (False, False)]


def test_help_shows_the_commands_own_defaults_for_nested_settings(capsys):
    """A nested setting's default in --help is the command's (the demo fine-tunes 2 epochs with vectors at 1.0),
    not the nested config class's own (1 epoch, 0.75)."""
    import re

    from unlearnable.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert re.search(r"--finetune.epochs X [^-]*\(default: 2.0\)", text)
    assert re.search(r"--vectors.scale X [^(]*\([^)]*\) \(default: 1.0\)", text)


def test_evaluate_scores_the_same_held_out_harmbench_prompts_as_the_demo():
    from unlearnable.experiments.setup import DataConfig, held_out_harmful

    demo = held_out_harmful(DataConfig())
    assert len(demo) == 80 and {p.category for p in demo} == {"harmbench"}
    assert held_out_harmful(DataConfig(seed=0)) == demo and held_out_harmful(DataConfig(seed=1)) != demo


def test_immunize_prints_its_table_from_the_typed_results(monkeypatch, capsys, tmp_path):
    """The command's last step, after results.json and the report are written: the conditions table."""
    from pathlib import Path

    from unlearnable.cli import immunize as cli_immunize
    from unlearnable.cli import main
    from unlearnable.results import load_results

    golden = load_results(Path(__file__).resolve().parent / "data" / "results-immunize-v1.json")
    monkeypatch.setattr(cli_immunize, "run_immunize", lambda *a, **kw: golden)
    assert main(["immunize", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for name, condition in golden.conditions.items():
        assert any(line.split()[:2] == [name, condition.resistance.verdict] for line in printed.splitlines())
