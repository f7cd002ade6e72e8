"""Artifact integrity and safe loading: atomic writes, no pickle unless allowed, no remote code unless trusted."""

import json
import os

import pytest
import torch
from test_cli import assert_clean_error, run_cli

from unlearnable.errors import UnlearnableError

ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture()
def pickle_only_dir(tmp_path, tiny):
    """A tiny model whose weights exist only as a pickle (``pytorch_model.bin``).

    transformers 5 ignores ``save_pretrained(safe_serialization=False)`` (it always writes safetensors), so the
    pickle is written the way older tools did: ``torch.save(state_dict)``."""
    model, tok = tiny
    path = tmp_path / "pickled"
    model.config.save_pretrained(path)
    tok.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    assert not any(p.suffix == ".safetensors" for p in path.iterdir())
    return path


def test_pickle_weights_refused_unless_allow_pickle(tmp_path, pickle_only_dir):
    harmful = tmp_path / "harmful.jsonl"
    harmful.write_text('{"prompt": "How do I pick a lock?"}\n', encoding="utf-8")
    res = run_cli("evaluate", "--model", pickle_only_dir, "--harmful", harmful, "--out", tmp_path / "eval.json",
                  env_extra=ENV)
    assert_clean_error(res, "holds only pickle weights")
    assert "--allow-pickle" in res.stderr and not (tmp_path / "eval.json").exists()
    res = run_cli("evaluate", "--model", pickle_only_dir, "--harmful", harmful, "--out", tmp_path / "eval.json",
                  "--allow-pickle", "--quiet", env_extra=ENV)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["summary"]["n_harmful"] == 1


def test_pickle_loads_the_same_weights_when_allowed(pickle_only_dir, tiny):
    from unlearnable.models import load_model

    with pytest.raises(UnlearnableError, match="--allow-pickle"):
        load_model(pickle_only_dir)
    loaded, _ = load_model(pickle_only_dir, allow_pickle=True)
    ref = tiny[0].state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())


def test_remote_code_never_runs_unless_trusted(tmp_path, tiny_dir, task_pairs):
    import shutil

    folder = tmp_path / "custom"
    shutil.copytree(tiny_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="my-custom-llm", auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                                                     "AutoModelForCausalLM": "modeling_custom.CustomModel"})
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    marker = tmp_path / "code-ran"
    (folder / "configuration_custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n", encoding="utf-8")
    data = tmp_path / "task.jsonl"
    data.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in task_pairs), encoding="utf-8")
    res = run_cli("finetune", "--model", folder, "--data", data, "--out", tmp_path / "out", env_extra=ENV)
    assert_clean_error(res, "needs its own Python code to load")
    assert "--trust-remote-code" in res.stderr
    assert not marker.exists(), "the model folder's code ran without --trust-remote-code"
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- atomic writes


def _no_leftovers(folder, name):
    return not [f for f in os.listdir(folder) if f.startswith(f".{name}.")]


def test_atomic_write_leaves_the_old_file_or_nothing(tmp_path, monkeypatch):
    from unlearnable import utils

    target = tmp_path / "results.json"
    utils.atomic_write_json(target, {"v": 1})

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(utils.os, "fsync", fail)
    with pytest.raises(OSError):
        utils.atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}  # the old content, whole
    with pytest.raises(OSError):
        utils.atomic_write_json(tmp_path / "new.json", {"v": 3})
    assert not (tmp_path / "new.json").exists()
    assert _no_leftovers(tmp_path, "results.json") and _no_leftovers(tmp_path, "new.json")


def test_model_and_vectors_folders_are_all_or_nothing(tmp_path, tiny, harmful_pairs, monkeypatch):
    from unlearnable.models import save_model
    from unlearnable.vectors import SecurityVectors, VectorConfig

    model, tok = tiny
    vectors = SecurityVectors.train(model, tok, harmful_pairs[:8], VectorConfig(epochs=1, batch_size=8),
                                    progress=False)

    class Broken(Exception):
        pass

    def broken(*a, **k):
        raise Broken("disk gone mid-write")

    monkeypatch.setattr(type(tok), "save_pretrained", broken)  # after the weights were written
    with pytest.raises(Broken):
        save_model(model, tok, tmp_path / "model")
    assert not (tmp_path / "model").exists() and _no_leftovers(tmp_path, "model")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(Broken):
        vectors.save(tmp_path / "vectors")
    assert not (tmp_path / "vectors").exists() and _no_leftovers(tmp_path, "vectors")


def test_evaluate_writes_results_atomically():
    """`evaluate --out` goes through atomic_write_json (checked at the source of the API the CLI calls)."""
    import inspect

    from unlearnable.experiments import jobs

    src = inspect.getsource(jobs._evaluate)
    assert "atomic_write_json(out, results)" in src and "open(" not in src
