"""Bad input fails before the first expensive stage, in every command.

The walking test passes one bad value to every option of every subcommand that takes a path, a size or a
registry name, and asserts a one-line error, exit status 2, no traceback, nothing written and no model loaded."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from unlearnable.cli import COMMANDS, main, make_parser
from unlearnable.config import build_config, validate
from unlearnable.errors import UnlearnableError

#: options whose value is a path that must exist (the leaf of the dotted name)
PATHS = {"model", "data", "harmful", "vectors", "harmful_pairs", "config", "reuse_points", "compare"}
#: options whose value is a name from a fixed set (a registry, or a short list a config checks)
NAMES = {"defenses", "judges", "judge", "benchmarks", "attacker", "attack", "attacks", "threat_models", "variants",
         "backbone", "backbones", "scheduler", "schedulers", "precision", "eval_categories", "cross_domain",
         "benign"}


def _subcommands():
    """``(argv prefix, parser)`` for every runnable subcommand, nested ones (``vectors train``) included."""
    for command in COMMANDS:
        top = make_parser(command)
        yield from _runnable([command], _choice(top, command))


def _choice(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _runnable(prefix, parser):
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not nested:
        yield prefix, parser
        return
    for name, child in nested[0].choices.items():
        yield from _runnable([*prefix, name], child)


def _bad_value(action: argparse.Action) -> str | None:
    """A value that must be refused for this option, or None where the option takes free text, a flag or a
    float (those are checked by their configs, not walked)."""
    leaf = action.dest.rpartition(".")[2]
    if leaf in PATHS:
        return "/nonexistent/unlearnable-test"
    if leaf in NAMES:
        return "no-such-name"
    if action.metavar == "N" or (action.metavar == "A,B,..." and _takes_ints(action)):
        return "-5"
    return None


def _takes_ints(action) -> bool:
    try:
        return action.type("7") == [7]
    except Exception:  # noqa: BLE001 - not an int list
        return False


def _cases():
    for prefix, parser in _subcommands():
        for action in parser._actions:
            if not action.option_strings or action.dest in ("help", "out"):
                continue
            bad = _bad_value(action)
            if bad is not None:
                yield pytest.param(prefix, action.option_strings[0], bad, id=f"{' '.join(prefix)} "
                                   f"{action.option_strings[0]}")


CASES = list(_cases())


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any attempt to load or convert a model fails the test."""
    from transformers.models.auto import auto_factory

    import unlearnable.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad value was refused")

    monkeypatch.setattr(auto_factory._BaseAutoModelClass, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(models, "convert_gguf", refuse)
    monkeypatch.setattr(models, "load_model", refuse)


def test_the_walk_covers_every_subcommand_and_kind():
    commands = {c[0] for c, _, _ in (p.values for p in CASES)}
    assert commands == set(COMMANDS) - {"ls"}
    values = {v for _, _, v in (p.values for p in CASES)}
    assert values == {"/nonexistent/unlearnable-test", "no-such-name", "-5"}
    assert len(CASES) > 150


def _exit_code(argv) -> int:
    """``main``'s exit status, whether it returns it or the argument parser exits."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("prefix,flag,bad", CASES)
def test_one_bad_value_fails_in_one_line_before_any_model(prefix, flag, bad, tmp_path, capsys, no_model_loads,
                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / ("e.json" if prefix == ["evaluate"] else "out")
    argv = [*prefix, flag, bad]
    if flag != "--compare":
        argv += ["--out", str(out)]
    if prefix == ["finetune"] and flag != "--data":
        (tmp_path / "d.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
        argv += ["--data", str(tmp_path / "d.jsonl")]
    code = _exit_code(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, err)
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("unlearnable: error: "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["d.jsonl"] if prefix == ["finetune"] and flag != "--data"
                                                          else [])


def test_the_four_reported_cases(tmp_path, capsys, no_model_loads):
    cases = {
        ("immunize", "--judges", "keyword,classifier:/nonexistent"): "classifier judge: /nonexistent",
        ("demo", "--judges", f"llama-guard:{tmp_path}"): "holds no *.safetensors",
        ("evaluate", "--benchmarks", "mmlu", "--mmlu.n", "-5"): "mmlu.n must be at least 0",
        ("evaluate", "--judges", "strongreject:/nonexistent"): "strongreject judge: /nonexistent",
    }
    for argv, message in cases.items():
        assert _exit_code([*argv, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "x").exists()


def test_evaluate_keeps_the_old_judge_spelling(tmp_path):
    from unlearnable.experiments import EvaluateJob

    cfg_file = tmp_path / "e.yaml"
    cfg_file.write_text("judge: keyword\n")
    assert build_config(EvaluateJob, file=cfg_file).judges == ["keyword"]
    parser = make_parser("evaluate")
    args = parser.parse_args(["evaluate", "--judge", "keyword,harmful-loss:1.5"])
    assert getattr(args, "judges") == ["keyword", "harmful-loss:1.5"]


def test_configs_built_in_python_are_validated_by_the_api(tmp_path):
    from unlearnable.experiments import ImmunizeConfig, run_immunize

    config = ImmunizeConfig(judges=["keyword", "harmbench:/nonexistent"])
    with pytest.raises(UnlearnableError, match="harmbench judge"):
        run_immunize(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_minimum_comes_from_the_field():
    @dataclasses.dataclass
    class C:
        steps: int = dataclasses.field(default=-1, metadata={"min": -1})
        sizes: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
        rate: float = dataclasses.field(default=0.5, metadata={"min": 0.0})
        free: float = -3.0

    validate(C())
    with pytest.raises(UnlearnableError, match="steps must be at least -1, not -2"):
        validate(C(steps=-2))
    with pytest.raises(UnlearnableError, match="sizes must be at least 0"):
        validate(C(sizes=[3, -1]))
    with pytest.raises(UnlearnableError, match="rate must be at least 0.0"):
        validate(C(rate=-0.1))


def test_harmful_loss_threshold_and_argument_checks():
    from unlearnable.judges import check_judges

    check_judges(["keyword", "harmful-loss:1.5", "harmful-loss"])
    for spec, message in [("harmful-loss:abc", "threshold"), ("harmful-loss:-1", "threshold"), ("keyword:x", "takes no argument"),
                          ("classifier:", "needs a local model path"), ("nosuch", "unknown judge")]:
        with pytest.raises(UnlearnableError, match=message):
            check_judges([spec])


def test_an_attack_without_attacker_harmless_data_fails_before_any_model(tmp_path, capsys, no_model_loads):
    argv = ["immunize", "--attacker", "search", "--data.n-harmless", "60", "--n-stability-harmless", "30",
            "--n-defense-harmless", "30", "--out", str(tmp_path / "out")]
    assert _exit_code(argv) == 2
    assert "need harmless pairs for the attacker" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
