"""LoRA adapter arithmetic: merging two LoRA adapters into one exact, plain-PEFT adapter by QR decomposition."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .utils import atomic_dir


def qr_merge(b1: torch.Tensor, a1: torch.Tensor, s1: float, b2: torch.Tensor, a2: torch.Tensor, s2: float):
    """Return ``(B, A)`` with ``B @ A == s1 * b1 @ a1 + s2 * b2 @ a2`` (rank r1 + r2), ``B`` orthonormal.

    ``[b1 b2] [s1 a1; s2 a2]`` is the sum; ``[b1 b2] = Q R`` (reduced QR), so ``B = Q`` and
    ``A = R [s1 a1; s2 a2]``. Computed in float64, returned in the inputs' dtype.
    """
    dtype = b1.dtype
    b = torch.cat([b1, b2], dim=1).double()
    a = torch.cat([s1 * a1.double(), s2 * a2.double()], dim=0)
    q, r = torch.linalg.qr(b, mode="reduced")
    return q.to(dtype), (r @ a).to(dtype)


def merge_adapters_qr(peft_model, first: str, second: str, out: str | os.PathLike) -> Path:
    """Merge adapters ``first`` and ``second`` of ``peft_model`` into one LoRA saved at ``out`` (plain PEFT format).

    The merged adapter has rank ``r1 + r2`` and ``lora_alpha = r`` (scaling 1), so loading it with
    ``PeftModel.from_pretrained`` reproduces ``W + s1 B1 A1 + s2 B2 A2`` exactly (up to float rounding).
    Both adapters must target the same modules.
    """
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import save_file

    cfg1 = peft_model.peft_config[first]
    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or first not in module.lora_A:
            continue
        if second not in module.lora_A:
            raise ValueError(f"adapters {first} and {second} target different modules ({name})")
        b, a = qr_merge(module.lora_B[first].weight.data, module.lora_A[first].weight.data, module.scaling[first],
                        module.lora_B[second].weight.data, module.lora_A[second].weight.data, module.scaling[second])
        key = name.replace(f".{first}", "")
        ranks[key.removeprefix("base_model.model.")] = a.shape[0]  # min(out_features, r1 + r2)
        state[f"{key}.lora_A.weight"] = a.contiguous()
        state[f"{key}.lora_B.weight"] = b.contiguous()
    if not ranks:
        raise ValueError(f"no LoRA layers carry adapter {first}")
    rank = max(ranks.values())
    # modules whose output is narrower than r1 + r2 get that smaller rank; alpha = rank keeps scaling 1
    pattern = {k: r for k, r in ranks.items() if r != rank}
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=sorted(
        {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in state}), bias="none", task_type="CAUSAL_LM",
        layers_to_transform=cfg1.layers_to_transform, layers_pattern=cfg1.layers_pattern,
        rank_pattern=pattern, alpha_pattern=dict(pattern))
    config.base_model_name_or_path = getattr(cfg1, "base_model_name_or_path", None)
    with atomic_dir(out) as tmp:
        config.save_pretrained(str(tmp))
        save_file(state, str(Path(tmp) / "adapter_model.safetensors"), metadata={"format": "pt"})
        (Path(tmp) / "README.md").write_text(
            f"LoRA adapter merged by QR from '{first}' and '{second}' (rank {rank}); plain PEFT format.\n")
    return Path(out)


def adapter_config_json(path: str | os.PathLike) -> dict:
    return json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
