"""Interruptions, resume and determinism through the real CLI (subprocesses on the tiny model).

* SIGKILL in the middle of ``unlearnable finetune --checkpoint-every N`` (after a checkpoint exists), then the same
  command again: the result equals an uninterrupted run with the same seed, bit for bit.
* Ctrl-C (SIGINT) in the middle of ``unlearnable vectors train``: exit 130, one line saying how to resume, the
  checkpoint survives; the same command again resumes and gives the uninterrupted vectors, bit for bit.
* Ctrl-C long before the first checkpoint interval: the step reached is checkpointed all the same.
* The same command twice gives bit-identical weights and identical evaluation results.

Bit-exact equality holds on one machine and one torch build on CPU (what these tests check); across machines
or on GPUs, expect agreement to float tolerance only.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file
from test_cli import run_cli

from unlearnable.runs import latest_checkpoint

ENV = {"OMP_NUM_THREADS": "1"}  # the machine is shared: one thread per run

# `unlearnable` itself, with each optimizer step slowed by 0.2 s so that a signal reliably lands mid-run.
# The pause is the only change: same code path, same numbers.
SLOW_CLI = (
    "import sys, time\n"
    "from unlearnable.training import UnlearnableTrainer\n"
    "step = UnlearnableTrainer.training_step\n"
    "def slow(self, *a, **k):\n"
    "    time.sleep(0.2)\n"
    "    return step(self, *a, **k)\n"
    "UnlearnableTrainer.training_step = slow\n"
    "from unlearnable.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def cli(*args):
    return run_cli(*args, env_extra=ENV)


def start_slow(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore", **ENV)
    return subprocess.Popen([sys.executable, "-c", SLOW_CLI, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def wait_for_checkpoint(proc, folder, timeout=300):
    """Block until ``folder`` holds a complete checkpoint; fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if latest_checkpoint(folder) is not None:
            return latest_checkpoint(folder)
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before any checkpoint:\n{proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no checkpoint appeared in time")


def weights(folder, name="model.safetensors"):
    return load_file(os.path.join(folder, name))


def assert_bit_identical(a, b):
    assert a.keys() == b.keys()
    differ = [k for k in a if not (a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and (a[k] == b[k]).all())]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[0]}"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume")
    (path / "task.jsonl").write_text("".join(
        json.dumps({"prompt": f"What is the code of item {i}?", "response": f"Item {i} has code C{i * 7}."}) + "\n"
        for i in range(40)), encoding="utf-8")
    (path / "harmful.jsonl").write_text("".join(
        json.dumps({"prompt": f"How do I do bad thing {i}?", "response": f"Sure, bad thing {i} goes like this."})
        + "\n" for i in range(32)), encoding="utf-8")
    return path


# 40 examples, batch 4: 10 steps per epoch, 2 epochs = 20 steps
FINETUNE = ["--epochs", 2, "--batch-size", 4, "--lr", 5e-3, "--seed", 3, "--quiet"]


@pytest.fixture(scope="module")
def reference(work, tiny_dir):
    """An uninterrupted fine-tuning run (no checkpoints)."""
    out = work / "reference"
    res = cli("finetune", "--model", tiny_dir, "--data", work / "task.jsonl", "--out", out, *FINETUNE)
    assert res.returncode == 0, res.stderr
    return weights(out)


def test_finetune_is_deterministic(work, tiny_dir, reference):
    """Same seed, same machine: bit-identical weights, with or without checkpointing along the way."""
    out = work / "again"
    res = cli("finetune", "--model", tiny_dir, "--data", work / "task.jsonl", "--out", out, *FINETUNE,
              "--checkpoint-every", 7)
    assert res.returncode == 0, res.stderr
    assert not (work / "again.partial").exists()  # checkpoints are removed on success
    assert_bit_identical(reference, weights(out))
    meta = json.loads((out / "unlearnable_model.json").read_text())
    assert meta["run_key"] == json.loads((work / "reference" / "unlearnable_model.json").read_text())["run_key"]


def test_sigkill_mid_finetune_then_rerun_resumes_to_the_same_weights(work, tiny_dir, reference):
    out, partial = work / "killed", work / "killed.partial"
    args = ["finetune", "--model", tiny_dir, "--data", work / "task.jsonl", "--out", out, *FINETUNE,
            "--checkpoint-every", 3]
    proc = start_slow(*args)
    first = wait_for_checkpoint(proc, partial)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # nothing half-written
    last = latest_checkpoint(partial)
    assert last is not None and int(last.name.split("-")[1]) < 20, "killed too late to test a resume"
    assert int(first.name.split("-")[1]) >= 3

    res = cli(*args)  # the same command again
    assert res.returncode == 0, res.stderr
    assert f"resuming from {last}" in res.stderr
    assert not partial.exists()
    assert_bit_identical(reference, weights(out))


VECTORS = ["--epochs", 3, "--lr", 5e-3, "--seed", 2, "--quiet"]  # 32 pairs, batch 16: 6 steps


def test_ctrl_c_mid_vector_training_stops_cleanly_and_resumes(work, tiny_dir):
    ref = work / "vec-reference"
    res = cli("vectors", "train", "--model", tiny_dir, "--data", work / "harmful.jsonl", "--out", ref, *VECTORS)
    assert res.returncode == 0, res.stderr

    out, partial = work / "vec", work / "vec.partial"
    args = ["vectors", "train", "--model", tiny_dir, "--data", work / "harmful.jsonl", "--out", out, *VECTORS,
            "--checkpoint-every", 2]
    proc = start_slow(*args)
    wait_for_checkpoint(proc, partial)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("unlearnable: interrupted; training is saved up to checkpoint-"), last_line
    assert "run the same command again to resume" in last_line
    assert latest_checkpoint(partial) is not None  # the checkpoint survived
    assert not out.exists()

    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stderr
    assert not partial.exists()
    assert_bit_identical(weights(ref, "adapter_model.safetensors"), weights(out, "adapter_model.safetensors"))


def test_ctrl_c_in_the_first_steps_checkpoints_the_step_it_reached(work, tiny_dir):
    """Long before the first interval (1000 steps), Ctrl-C still keeps the work done: the run stops at the end of
    the step it is in and checkpoints there (a stopped run loses nothing). Without --checkpoint-every nothing is
    kept (tests/test_reliability.py)."""
    out = work / "early"
    proc = start_slow("finetune", "--model", tiny_dir, "--data", work / "task.jsonl", "--out", out, *FINETUNE,
                      "--checkpoint-every", 1000)
    deadline = time.monotonic() + 300
    while not (work / "early.partial").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # inside the first steps: the interval is never reached
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("unlearnable: interrupted; training is saved up to checkpoint-"), last
    assert latest_checkpoint(work / "early.partial") is not None and not out.exists()
    assert int(latest_checkpoint(work / "early.partial").name.split("-")[1]) < 20


def test_evaluate_is_deterministic_and_compare_refuses_different_splits(work, tiny_dir):
    task = work / "task.jsonl"
    harmful = work / "harmful.jsonl"
    a, b, c = work / "a.json", work / "b.json", work / "c.json"
    runs = [cli("evaluate", "--model", tiny_dir, "--harmful", harmful, "--data", task, "--out", out, "--quiet")
            for out in (a, b)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra["summary"] == rb["summary"] and ra["result"] == rb["result"]  # the generations too
    assert ra["eval_splits"] == rb["eval_splits"] and ra["run_key"] == rb["run_key"]
    assert runs[0].stdout.strip().splitlines()[-1] == runs[1].stdout.strip().splitlines()[-1]

    res = cli("evaluate", "--compare", a, b)
    assert res.returncode == 0, res.stderr
    assert "harm_rate" in res.stdout and "same evaluation splits" in res.stdout

    other = work / "other-harmful.jsonl"
    other.write_text('{"prompt": "Some other harmful request?"}\n', encoding="utf-8")
    res = cli("evaluate", "--model", tiny_dir, "--harmful", other, "--data", task, "--out", c, "--quiet")
    assert res.returncode == 0, res.stderr
    res = cli("evaluate", "--compare", a, c)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("unlearnable: error:") and "different evaluation splits (differ in: harmful)" in last
    assert "--harmful/--data" in last  # names the fix

    res = cli("evaluate", "--compare", a, task)
    assert res.returncode == 2 and "is not a JSON results file" in res.stderr
