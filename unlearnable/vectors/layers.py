"""Where the vectors live inside a model: the one adapter name, its layers and parameters, freezing, scaling.

Everything that finds vectors in a model goes through :func:`vector_layers` (PEFT LoRA layers that carry the
vectors' adapter), never through parameter-name matching.
"""

from __future__ import annotations

import torch

from ..adapters import lora_layers

VECTORS_ADAPTER = "security_vectors"


def vector_layers(model) -> list:
    """The LoRA layers of ``model`` that carry the vectors adapter."""
    return [m for m in lora_layers(model) if VECTORS_ADAPTER in m.lora_A]


def vector_params(model) -> dict[str, torch.nn.Parameter]:
    """The vectors' parameters in ``model``, named as in the vectors' own state dict."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and VECTORS_ADAPTER in module.lora_A:
            out[f"{name}.lora_A.weight"] = module.lora_A[VECTORS_ADAPTER].weight
            out[f"{name}.lora_B.weight"] = module.lora_B[VECTORS_ADAPTER].weight
    return out


def freeze_vectors(model) -> None:
    """Turn off gradients of the vectors (PEFT's ``set_adapter([...])`` turns them back on: call after it)."""
    for p in vector_params(model).values():
        p.requires_grad_(False)
        p.grad = None


def set_vector_scale(model, scale: float) -> None:
    """The vectors' strength: their LoRA scaling becomes ``scale * alpha / r`` (0 = off)."""
    for module in vector_layers(model):
        module.set_scale(VECTORS_ADAPTER, scale)
