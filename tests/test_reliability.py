"""Reliability under real conditions, through the real CLI in subprocesses (tiny model): fingerprints that travel
between machines, signals from schedulers, one writer per output folder, full disks and unwritable outputs.

Not testable here, and how the code covers it: a GPU (the fingerprint hashes the bytes copied to the CPU, so the
device cannot change it; the resumed hardened model is moved to the aligned model's device and dtype, checked
below on the CPU with float64), a real scheduler (SIGTERM is what SLURM, Kubernetes and ``timeout`` send: sent
here by the test), a really full or read-only disk (the OS errors are injected where the writes happen).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from test_cli import assert_clean_error, run_cli
from test_resume_cli import ENV, assert_bit_identical, weights

from unlearnable.errors import UnlearnableError

# `unlearnable` itself, each optimizer step slowed by 0.2 s and the first one announced in a file, so that a
# signal or a second run reliably lands mid-training. The pause is the only change: same code, same numbers.
SLOW_CLI = textwrap.dedent("""
    import os, sys, time
    from unlearnable.training import UnlearnableTrainer
    step = UnlearnableTrainer.training_step
    def slow(self, *a, **k):
        open(os.environ["STEP_FILE"], "a").write("step\\n")
        time.sleep(0.2)
        return step(self, *a, **k)
    UnlearnableTrainer.training_step = slow
    from unlearnable.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def start_slow(tmp_path, *args, ignore_sigint: bool = False):
    step_file = tmp_path / f"steps-{time.monotonic_ns()}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore",
               STEP_FILE=str(step_file), **ENV)
    # a job started in the background of a non-interactive shell inherits SIGINT as ignored
    pre = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=pre)
    return proc, step_file


def wait_for_steps(proc, step_file, n=2, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step_file.is_file() and len(step_file.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before training:\n{proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("training did not start in time")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("reliability")
    for name, n in (("task", 48), ("other", 16)):
        (path / f"{name}.jsonl").write_text("".join(
            json.dumps({"prompt": f"What is the {name} code of item {i}?", "response": f"Item {i} is C{i * 7}."})
            + "\n" for i in range(n)), encoding="utf-8")
    return path


LONG = ["--epochs", 3, "--batch-size", 4, "--lr", 5e-3, "--seed", 1, "--quiet"]  # 36 steps


# ------------------------------------------------------------------------------------------ fingerprints


FINGERPRINT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(int(sys.argv[2]))
    from unlearnable.models import load_model, model_fingerprint
    model, _ = load_model(sys.argv[1])
    print(model_fingerprint(model), torch.get_num_threads())
""")


def test_fingerprint_is_the_same_for_any_thread_count_and_after_reload(tmp_path, tokenizer):
    """Tensors large enough to be reduced in parallel (a float sum of them depends on the thread count)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from unlearnable.models import load_model, model_fingerprint, save_model

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    save_model(model, tokenizer, tmp_path / "m")
    prints = {}
    for threads in (1, 2, 4):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
        res = subprocess.run([sys.executable, "-c", FINGERPRINT, str(tmp_path / "m"), str(threads)],
                             capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        fp, used = res.stdout.split()
        assert int(used) == threads
        prints[threads] = fp
    assert len(set(prints.values())) == 1, prints
    assert model_fingerprint(model) == prints[1]  # in memory, before saving: the same
    reloaded, _ = load_model(tmp_path / "m")
    assert model_fingerprint(reloaded) == prints[1]
    assert model_fingerprint(model.to(torch.bfloat16)) != prints[1]  # another dtype is another model
    with torch.no_grad():
        reloaded.model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3
    assert model_fingerprint(reloaded) != prints[1]  # one changed weight is another model


def test_vectors_refuse_a_converted_model_and_vectors_of_the_old_fingerprint(tiny, harmful_pairs):
    from unlearnable.vectors import SecurityVectors, VectorConfig

    model, tok = tiny
    vectors = SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(epochs=1, batch_size=8), progress=False)
    with pytest.raises(UnlearnableError, match=r"trained for a model in float32, but the model given is in bfloat16"):
        vectors.check(model.to(torch.bfloat16))
    del vectors.metadata["fingerprint_version"]  # as saved before the fingerprint was made of the bytes
    with pytest.raises(UnlearnableError, match="earlier version.*train them again"):
        vectors.check(model.to(torch.float32))


# ------------------------------------------------------------------------------------------ signals


@pytest.fixture(scope="module")
def reference(data, tiny_dir):
    out = data / "reference"
    res = run_cli("finetune", "--model", tiny_dir, "--data", data / "task.jsonl", "--out", out, *LONG, env_extra=ENV)
    assert res.returncode == 0, res.stderr
    return weights(out)


def test_sigterm_checkpoints_at_the_step_it_reached_and_the_rerun_resumes(tmp_path, data, tiny_dir, reference):
    """A preempted job loses nothing: with checkpointing on (interval far beyond the run), SIGTERM still writes a
    checkpoint at the step it stopped at; exit 143 and the resume line; the same command finishes the run."""
    out = tmp_path / "tuned"
    args = ["finetune", "--model", tiny_dir, "--data", data / "task.jsonl", "--out", out, *LONG,
            "--checkpoint-every", 1000]
    proc, steps = start_slow(tmp_path, *args)
    wait_for_steps(proc, steps, n=3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("unlearnable: terminated (SIGTERM); training is saved up to checkpoint-"), last
    step = int(last.split("checkpoint-")[1].split()[0])
    assert 3 <= step < 36 and not out.exists()
    res = run_cli(*args, env_extra=ENV)
    assert res.returncode == 0, res.stderr
    assert_bit_identical(weights(out), reference)


def test_ctrl_c_works_when_the_shell_left_sigint_ignored(tmp_path, data, tiny_dir):
    out = tmp_path / "tuned"
    proc, steps = start_slow(tmp_path, "finetune", "--model", tiny_dir, "--data", data / "task.jsonl", "--out", out,
                             *LONG, ignore_sigint=True)
    wait_for_steps(proc, steps)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted before any checkpoint" in stderr.strip().splitlines()[-1]
    assert not out.exists() and not (tmp_path / "tuned.partial").exists()


# ------------------------------------------------------------------------------------------ one writer


def test_one_writer_per_output_folder_and_no_stale_lock_after_kill_9(tmp_path, data, tiny_dir):
    out = tmp_path / "tuned"
    first, steps = start_slow(tmp_path, "finetune", "--model", tiny_dir, "--data", data / "task.jsonl", "--out", out,
                              *LONG, "--epochs", 10)  # long enough to still hold the folder when the second comes
    wait_for_steps(first, steps)
    second = run_cli("finetune", "--model", tiny_dir, "--data", data / "other.jsonl", "--out", out, "--quiet",
                     env_extra=ENV)
    assert_clean_error(second, f"output folder {out} is in use by another unlearnable run (pid {first.pid}")
    first.kill()  # kill -9: the OS drops its lock
    first.communicate(timeout=60)
    third = run_cli("finetune", "--model", tiny_dir, "--data", data / "other.jsonl", "--out", out, "--quiet",
                    "--epochs", 1, env_extra=ENV)
    assert third.returncode == 0, third.stderr
    assert (out / "model.safetensors").is_file()


def test_cache_writers_merge_instead_of_overwriting(tmp_path, tiny):
    """Two processes adding base-model answers to one cache file: both sets survive (the cache is locked)."""
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        import unlearnable.experiments.setup as setup
        cache = setup.ResponseCache.__new__(setup.ResponseCache)
        cache.path, cache.progress = Path(sys.argv[1]), False
        cache.data = cache._read()
        setup.generate = lambda model, tok, prompts, **kw: (time.sleep(1.0), [p.upper() for p in prompts])[1]
        cache.model = cache.tok = None
        cache.max_new_tokens = 8
        cache.answers([f"{sys.argv[2]} prompt {i}" for i in range(3)])
    """)
    path = tmp_path / "answers.json"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), who], stderr=subprocess.PIPE, text=True)
             for who in ("alpha", "beta")]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert len(json.loads(path.read_text())) == 6


# ------------------------------------------------------------------------------------------ disks


def _with_patch(tmp_path, code: str) -> dict:
    """An environment whose Python runs ``code`` at start-up (sitecustomize), as the CLI subprocess's."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(code), encoding="utf-8")
    return {**ENV, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_a_full_disk_is_refused_before_training(tmp_path, data, tiny_dir):
    env = _with_patch(tmp_path, """
        import shutil, collections
        shutil.disk_usage = lambda path: collections.namedtuple("u", "total used free")(10**9, 10**9 - 4096, 4096)
    """)
    out = tmp_path / "tuned"
    res = run_cli("finetune", "--model", tiny_dir, "--data", data / "task.jsonl", "--out", out, "--quiet",
                  env_extra=env)
    assert_clean_error(res, f"not enough free space for the fine-tuned model at {out}")
    assert "'loss'" not in res.stdout and not out.exists()


@pytest.mark.parametrize("code, needle", [
    (errno.ENOSPC, "no space left on the device; free some space or choose another --out"),
    (errno.EACCES, "permission denied; choose a --out you can write to"),
    (errno.EROFS, "read-only file system; choose a --out on a writable disk"),
], ids=["ENOSPC", "EACCES", "EROFS"])
def test_write_errors_are_one_line_and_leave_nothing(tmp_path, data, tiny_dir, code, needle):
    """The weights fail to write after training (as safetensors reports a full disk: its own error type)."""
    env = _with_patch(tmp_path, f"""
        import os, safetensors, safetensors.torch
        def broken(*a, **k):
            raise safetensors.SafetensorError("Error while serializing: IoError(Os {{ code: {code}, kind: Other, "
                                              "message: \\"{os.strerror(code)}\\" }}) (os error {code})")
        safetensors.torch.save_file = broken
    """)
    out = tmp_path / "tuned"
    res = run_cli("finetune", "--model", tiny_dir, "--data", data / "other.jsonl", "--out", out, "--quiet",
                  "--epochs", 1, env_extra=env)
    assert_clean_error(res, needle)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tuned")]


# ------------------------------------------------------------------------------------------ found in review


def test_an_explicit_seed_0_wins_over_the_config_file(tmp_path, data, tiny_dir):
    (tmp_path / "cfg.json").write_text(json.dumps({"seed": 5, "vectors": {"epochs": 1.0}}), encoding="utf-8")
    harmful = tmp_path / "harmful.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"Bad thing {i}?", "response": f"Sure, step {i}."}) + "\n"
                               for i in range(8)), encoding="utf-8")
    seeds = {}
    for flags in ([], ["--seed", "0"]):
        out = tmp_path / f"v{len(flags)}"
        res = run_cli("vectors", "train", "--model", tiny_dir, "--data", harmful, "--out", out, "--config",
                      tmp_path / "cfg.json", "--quiet", *flags, env_extra=ENV)
        assert res.returncode == 0, res.stderr
        seeds[len(flags)] = json.loads((out / "unlearnable_vectors.json").read_text())["config"]["seed"]
    assert seeds == {0: 5, 2: 0}


def test_a_resumed_hardened_model_is_on_the_aligned_models_device_and_dtype(tiny, harmful_pairs, tmp_path):
    from unlearnable.data import Pair
    from unlearnable.defenses import DEFENSES, DefenseData
    from unlearnable.experiments.immunize import ImmunizeConfig, _Sweep

    model, tok = tiny
    sweep = _Sweep.__new__(_Sweep)  # only what hardening needs: the aligned model, its data, the folder
    sweep._model, sweep.tok, sweep.out, sweep.progress = model.double(), tok, tmp_path, False
    sweep.config = ImmunizeConfig()  # one process: nothing shared
    sweep.defense_data = DefenseData(harmful=harmful_pairs[:8], refusals=[Pair("Bad?", "I'm sorry, I can't.")])
    defense = DEFENSES.get("adversarial-loss").from_options({"max_steps": 2})
    fresh = sweep.hardened(defense)
    resumed = sweep.hardened(defense)  # the second time it is loaded from OUT/defenses/.../model
    assert resumed is not fresh
    first = next(resumed.parameters())
    assert first.dtype == torch.float64 and first.device == next(model.parameters()).device
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), resumed.state_dict().values()))
