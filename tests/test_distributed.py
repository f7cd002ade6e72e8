"""Security-vector fine-tuning under DDP: `accelerate launch`, 2 CPU processes over gloo, tiny model.

`accelerate launch --cpu --num_processes 2` starts ONE process unless MPI is set up (accelerate's CPU launcher
is mpirun), so the tests launch with configs/accelerate/ddp_cpu.yaml, whose torchrun launcher starts two; the
model lives on the CPU, so the Trainer runs DDP over gloo. The first test would fail with world size 1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "ddp_finetune.py"
DDP_CONFIG = ROOT / "configs" / "accelerate" / "ddp_cpu.yaml"

# DDP vs one process on the same full-batch steps: only float summation order differs (measured: weights
# 1.4e-7 max abs, losses 1.7e-7 relative); the tolerances leave ~100x room and still catch a wrong loss
# scaling (2x), a skipped all-reduce or a rank training on half the data (differences of 1e-3 and up).
WEIGHT_ATOL = 1e-5
LOSS_RTOL = 1e-5

needs_accelerate = pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not on PATH")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def _launch(args: list[str], timeout: int = 150) -> subprocess.CompletedProcess:
    cmd = ["accelerate", "launch", "--config_file", str(DDP_CONFIG), "--num_processes", "2",
           "--main_process_port", str(_free_port()), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _load_st(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@needs_accelerate
@pytest.mark.parametrize("fold", [False, True], ids=["adapter", "folded"])
def test_vectors_finetune_under_ddp_matches_one_process(tiny_dir, tmp_path, fold):
    """Adapter path (bf16 weights, GPUs) and folded path (fp32 weights, the CPU default) under 2-rank DDP."""
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    flags = ["--fold"] if fold else []
    _launch([str(SCRIPT), "--model", str(tiny_dir), "--out", str(ddp), *flags])
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_dir), "--out", str(single), *flags],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]

    ranks = [json.loads((ddp / f"rank{r}.json").read_text()) for r in (0, 1)]
    one = json.loads((single / "rank0.json").read_text())
    n = one["n_data"]
    for r, rec in enumerate(ranks):
        # training ran on both ranks of a 2-process gloo group, every step on its own half of the data
        assert (rec["rank"], rec["world_size"], rec["trainer_world_size"], rec["backend"]) == (r, 2, 2, "gloo")
        assert rec["optimizer_steps"] == one["optimizer_steps"] == 3
        assert rec["forward_calls"] == 3 and rec["rows_per_call"] == [n // 2] * 3
        # the vectors were frozen on every step and are bit-identical to the trained vectors at the end
        assert rec["vectors_requires_grad_any_step"] is False and rec["vectors_grad_any_step"] is False
        assert rec["vectors_state_unchanged"] is True
        if fold:  # in the frozen weights on every step (no adapter parameters), and out of them afterwards
            assert rec["folded_steps"] == rec["optimizer_steps"] and rec["n_vector_tensors"] == 0
        else:
            assert rec["folded_steps"] == 0
            assert rec["vectors_unchanged"] is True and rec["n_vector_tensors"] > 0
        assert rec["folded_after"] is False
    for step0, step1 in zip(ranks[0]["rows_seen"], ranks[1]["rows_seen"]):
        assert not set(step0) & set(step1)  # DDP sharded the batch ...
        assert set(step0) | set(step1) == set(one["rows_seen"][0])  # ... and the two halves are the full batch
    # DDP replicas stay identical
    assert ranks[0]["vectors_digest"] == ranks[1]["vectors_digest"]
    assert ranks[0]["model_digest"] == ranks[1]["model_digest"]

    # ... and agree with one process on the same full-batch steps, within float-summation noise
    assert ranks[0]["losses"] == pytest.approx(one["losses"], rel=LOSS_RTOL)
    w_ddp, w_one = _load_st(ddp / "rank0.safetensors"), _load_st(single / "rank0.safetensors")
    base = _load_st(tiny_dir / "model.safetensors")
    assert w_ddp.keys() == w_one.keys()
    assert max((w_ddp[k] - w_one[k]).abs().max().item() for k in w_ddp) < WEIGHT_ATOL
    assert max((w_ddp[k] - base[k]).abs().max().item() for k in w_ddp if k in base) > 1e-3  # it did train

    # rank 0 saved a plain model that loads with transformers alone and matches its weights
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(ddp / "model")
    assert not any("lora" in k for k in loaded.state_dict())
    assert all(torch.equal(loaded.state_dict()[k], w_ddp[k]) for k in w_ddp)
    with torch.no_grad():
        assert torch.isfinite(loaded(input_ids=torch.tensor([[1, 5, 7, 9]])).logits).all()


@needs_accelerate
def test_cli_finetune_under_accelerate_launch_writes_one_complete_model(tiny_dir, tmp_path, harmful_pairs):
    """`accelerate launch -m unlearnable.cli finetune --vectors ...`: only rank 0 writes --out (before the fix
    both ranks replaced the folder and it ended up without model.safetensors)."""
    from unlearnable.data import save_pairs
    from unlearnable.models import load_model
    from unlearnable.vectors import SecurityVectors, VectorConfig

    model, tok = load_model(tiny_dir)
    SecurityVectors.train(model, tok, harmful_pairs, VectorConfig(epochs=1, batch_size=8), progress=False).save(
        tmp_path / "vectors")
    data = tmp_path / "data.jsonl"
    save_pairs(harmful_pairs[:16], data)
    out = tmp_path / "tuned"
    proc = _launch(["-m", "unlearnable.cli", "finetune", "--model", str(tiny_dir), "--data", str(data),
                    "--vectors", str(tmp_path / "vectors"), "--out", str(out), "--epochs", "1",
                    "--batch-size", "4", "--quiet"])
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{\"out\"")]
    assert len(lines) == 1 and lines[0]["vectors"] is True  # one result line, from rank 0
    assert {"config.json", "model.safetensors", "unlearnable_model.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tuned")]  # no temporary or .old folder left
    meta = json.loads((out / "unlearnable_model.json").read_text())
    assert meta["vectors_removed"] is True and meta["n_examples"] == 16
    from transformers import AutoModelForCausalLM

    tuned = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in k for k in tuned.state_dict())


def test_shipped_accelerate_configs_parse_and_use_known_keys():
    """Every shipped config loads with accelerate's own loader, and every fsdp/deepspeed key is a real launch
    option (accelerate copies unknown ones onto its args silently, so a typo would just be ignored)."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    known = vars(launch_command_parser().parse_args(["x.py"]))
    expected = {"ddp_cpu.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP", "deepspeed_zero3.yaml": "DEEPSPEED"}
    for name, kind in expected.items():
        cfg = ClusterConfig.from_yaml_file(str(ROOT / "configs" / "accelerate" / name))
        assert str(cfg.distributed_type).endswith(kind), name
        for section in ("fsdp_config", "deepspeed_config"):
            for key in getattr(cfg, section) or {}:
                full = key if section != "fsdp_config" or key.startswith("fsdp") else f"fsdp_{key}"
                assert full in known, f"{name}: unknown {section} key {key}"
    fsdp = ClusterConfig.from_yaml_file(str(ROOT / "configs" / "accelerate" / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2  # FSDP2: frozen backbone + trainable LoRA need no use_orig_params
