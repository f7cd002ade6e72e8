"""The README's Python examples run as written (paths substituted) on the tiny model, so what users copy works."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_block_after(heading: str) -> str:
    """The first ```python block after the Markdown heading ``heading``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block after {heading!r}"
    return match.group(1)


def run_as_written(code: str, substitutions: list[tuple[str, str]], tmp_path, where: str = "the README's example"):
    """``code`` with each documented path replaced (each must still be in it), run as a script in a clean
    environment: it must exit 0. Returns the finished process."""
    for old, new in substitutions:
        assert old in code, f"{where} no longer names {old}"
        code = code.replace(old, new)
    script = tmp_path / "example.py"
    script.write_text(code)
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                              "HOME": str(tmp_path), "PYTHONPATH": str(README.parent)})
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_the_trl_drop_in_runs_as_written(tiny_dir, harmful_pairs, tmp_path):
    pytest.importorskip("trl", reason="the Trainer/TRL drop-in needs trl (pip install -e '.[dev]')")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearnable.vectors import SecurityVectors, VectorConfig

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
    SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(epochs=1, batch_size=8),
                          progress=False).save(tmp_path / "vectors")
    rows = [{"messages": [{"role": "user", "content": f"What is code {i}?"}, {"role": "assistant",
                                                                          "content": f"C{i}"}]} for i in range(8)]
    (tmp_path / "user.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = python_block_after("### In your own `Trainer` or TRL `SFTTrainer` script")
    run_as_written(code, [('"my-model/"', repr(str(tiny_dir))), ('"vectors/"', repr(str(tmp_path / "vectors"))),
                          ('"user.jsonl"', repr(str(tmp_path / "user.jsonl"))), ('"run/"', repr(str(tmp_path / "run"))),
                          ('"tuned/"', repr(str(tmp_path / "tuned")))], tmp_path)
    saved = sorted(p.name for p in (tmp_path / "tuned").iterdir())
    assert "adapter_model.safetensors" in saved
    from safetensors.torch import load_file

    assert not [k for k in load_file(tmp_path / "tuned" / "adapter_model.safetensors") if "security" in k]


def test_the_python_api_example_runs_as_written(tiny_dir, harmful_pairs, tmp_path):
    def jsonl(name: str, rows: list[dict]) -> str:
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return repr(str(tmp_path / name))

    pairs = [{"prompt": p.prompt, "response": p.response} for p in harmful_pairs]
    user = pairs[:4] + [{"prompt": f"What is code {i}?", "response": f"C{i}"} for i in range(8)]
    code = python_block_after("## Python API")
    res = run_as_written(code, [
        ("load_model()", f"load_model({str(tiny_dir)!r})"), ('"harmful.jsonl"', jsonl("h.jsonl", pairs)),
        ('"vectors/"', repr(str(tmp_path / "vectors"))), ('"user.jsonl"', jsonl("u.jsonl", user)),
        ('"tuned/"', repr(str(tmp_path / "tuned"))),
        ('"heldout.jsonl"', jsonl("e.jsonl", [{"prompt": f"How do I do harm {i}?"} for i in range(4)]))], tmp_path)
    assert 0.0 <= float(res.stdout.strip().splitlines()[-1]) <= 1.0  # the harm rate it prints
    assert (tmp_path / "vectors" / "unlearnable_vectors.json").is_file()
    assert (tmp_path / "tuned" / "config.json").is_file()


def test_the_scaling_guides_large_model_recipe_runs_as_written(tiny_dir, harmful_pairs, tmp_path):
    text = (README.parent / "docs" / "guide" / "scaling.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    pairs = [{"prompt": p.prompt, "response": p.response} for p in harmful_pairs[:8]]
    (tmp_path / "h.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    (tmp_path / "u.jsonl").write_text("".join(json.dumps({"prompt": f"Code {i}?", "response": f"C{i}"}) + "\n"
                                              for i in range(8)))
    run_as_written(code, [('"path/to/Llama-3.1-8B-Instruct"', repr(str(tiny_dir))),
                          ('"harmful.jsonl"', repr(str(tmp_path / "h.jsonl"))),
                          ('"user.jsonl"', repr(str(tmp_path / "u.jsonl"))), ('"tuned-8b/"', repr(str(tmp_path / "tuned")))],
                   tmp_path, where="the guide's example")
    assert (tmp_path / "tuned" / "config.json").is_file()


GUIDES = README.parent / "docs" / "guide"
SCRIPTS = Path(__file__).resolve().parent / "scripts"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


#: every Python example in the README and the guides, by (file, index among its Python blocks), and what runs it:
#: the test below, or the README example it repeats byte for byte (run by the README's tests above)
RUN_BY = {
    ("README.md", 0): "test_the_python_api_example_runs_as_written",
    ("README.md", 1): "test_the_trl_drop_in_runs_as_written",
    ("security-vectors.md", 0): ("README.md", 0),
    ("security-vectors.md", 1): ("README.md", 1),
    ("scaling.md", 0): "test_the_scaling_guides_large_model_recipe_runs_as_written",
    ("scaling.md", 1): "test_the_scaling_guides_distributed_script_runs_as_written",
    ("configuration.md", 0): "test_the_configuration_guides_example_runs_as_written",
    ("defenses.md", 0): "test_the_plugin_example_runs_as_written",
    ("immunize.md", 0): "test_the_immunize_guides_reading_example_runs_as_written",
}


def test_every_python_example_in_the_readme_and_guides_is_run_by_a_test():
    blocks = {("README.md", i): b for i, b in enumerate(python_blocks(README))}
    blocks |= {(p.name, i): b for p in sorted(GUIDES.glob("*.md")) for i, b in enumerate(python_blocks(p))}
    assert set(blocks) == set(RUN_BY), "a Python example without a test that runs it (add one to RUN_BY)"
    for where, runner in RUN_BY.items():
        if isinstance(runner, tuple):
            assert blocks[where] == blocks[runner], f"{where} must repeat {runner} byte for byte (or get its own test)"
        else:
            assert runner in globals(), runner


def _tiny_immunize_substitutions(call: str, out: Path) -> list[tuple[str, str]]:
    """``run_immunize(CONFIG, "DIR")`` as a guide writes it, run instead as ``tiny_run.tiny_immunize(CONFIG, out)``:
    the guide's config, on the tiny model with tiny sizes."""
    config = call.removeprefix("run_immunize(").rsplit(",", 1)[0]
    return [(call, f"__import__('sys').path.insert(0, {str(SCRIPTS)!r}) or "
                   f"__import__('tiny_run').tiny_immunize({config}, {str(out)!r})")]


def test_the_configuration_guides_example_runs_as_written(tmp_path):
    code = python_blocks(GUIDES / "configuration.md")[0]
    out = tmp_path / "run"
    run_as_written(code, [('"configs/search-quick-service.yaml"',
                           repr(str(README.parent / "configs" / "search-quick-service.yaml"))),
                          *_tiny_immunize_substitutions('run_immunize(cfg, "runs/search-quick-seed1")', out)],
                   tmp_path, where="the configuration guide's example")
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["seed"] == 1 and saved["attacker_search"]  # the flag over the file, the file's search


def test_the_plugin_example_runs_as_written(tmp_path):
    code = python_blocks(GUIDES / "defenses.md")[0]
    call = 'run_immunize(ImmunizeConfig(defenses=["none", "refusal-replay"]), "runs/refusal-replay")'
    res = run_as_written(code, _tiny_immunize_substitutions(call, tmp_path / "run"), tmp_path,
                         where="the defences guide's plugin example")
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["conditions"]["refusal-replay"]["resistance"]["verdict"] == res.stdout.strip().splitlines()[-1]


def test_the_scaling_guides_distributed_script_runs_as_written(tiny_dir, harmful_pairs, tmp_path):
    from unlearnable import SecurityVectors, VectorConfig, load_model

    model, tok = load_model(str(tiny_dir), dtype="bfloat16")  # the vectors are trained on the model as loaded
    SecurityVectors.train(model, tok, harmful_pairs[:8], VectorConfig(epochs=1, batch_size=8),
                          progress=False).save(tmp_path / "vectors")
    (tmp_path / "u.jsonl").write_text("".join(json.dumps({"prompt": f"Code {i}?", "response": f"C{i}"}) + "\n"
                                              for i in range(8)))
    code = python_blocks(GUIDES / "scaling.md")[1]
    run_as_written(code, [("f\"cuda:{int(os.environ.get('LOCAL_RANK', 0))}\"", '"cpu"'),  # one CPU process
                          ('"path/to/Llama-3.1-8B-Instruct"', repr(str(tiny_dir))),
                          ('"vectors-8b/"', repr(str(tmp_path / "vectors"))),
                          ('"user.jsonl"', repr(str(tmp_path / "u.jsonl"))),
                          ('"tuned-8b/"', repr(str(tmp_path / "tuned")))], tmp_path, where="the scaling guide's script")
    assert (tmp_path / "tuned" / "config.json").is_file()


def test_the_immunize_guides_reading_example_runs_as_written(tmp_path):
    code = python_blocks(GUIDES / "immunize.md")[0]
    results = Path(__file__).resolve().parent / "data" / "results-immunize-v1.json"
    res = run_as_written(code, [('"runs/immunize"', repr(str(results)))], tmp_path,
                         where="the immunize guide's example")
    saved = json.loads(results.read_text())
    assert [line.split()[0] for line in res.stdout.strip().splitlines()] == list(saved["conditions"])
