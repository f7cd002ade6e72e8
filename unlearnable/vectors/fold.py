"""Folded vectors: the frozen vectors added into the backbone's weights for training, subtracted afterwards.

A frozen LoRA adapter adds ``delta = scale * B @ A * alpha / r`` to a linear layer's output map. Adding ``delta``
to ``W`` once computes the same function without the adapter's two extra matmuls in every forward and backward,
so a step with vectors costs what a step without them costs:

* **LoRA backbone**: ``W`` is frozen, so ``W + delta`` stays exactly what was folded in, and subtracting
  ``delta`` restores ``W`` to one float rounding (<= 1 ulp); a checksum proves nothing else changed it.
* **Full backbone**: the gradient with respect to ``W' = W + delta`` equals the gradient with respect to ``W``
  (``delta`` is a constant), so training ``W'`` and subtracting ``delta`` afterwards is training ``W`` with the
  adapter on, as long as nothing acts on ``W'`` other than the gradient: no weight decay (it would shrink the
  folded vectors too), which :meth:`FoldedVectors.supported` requires.

The delta is PEFT's own (``LoraLayer.get_delta_weight``), computed by the vectors' LoRA layers, which are kept
after the adapter is unloaded from the model. PEFT's ``merge()`` cannot serve here: once any adapter of a layer
is merged, PEFT's forward skips every adapter of that layer, so a backbone LoRA could not train on top of
merged vectors, and ``merge_and_unload`` of the backbone later would fold the vectors into the released model.
Folding needs fp32/fp64 weights (a half-precision ``W + delta - delta`` is not ``W``); elsewhere the vectors run
as an adapter branch.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from ..adapters import NO_MERGE_ATTR
from .layers import VECTORS_ADAPTER, vector_layers

#: attribute set on a model whose weights currently hold folded vectors (see :class:`FoldedVectors`)
FOLDED_ATTR = "_unlearnable_folded_vectors"
_SHARDED = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")


class FoldedVectors:
    """Vectors folded into the weights of a model; a context manager that unfolds them for good on exit."""

    def __init__(self, layers: list, trains_weights: bool = False):
        self.layers = layers  # the vectors' PEFT LoRA layers; each one's base layer is the model's own linear
        self.trains_weights = trains_weights  # full backbone: the folded weights train, so no checksum
        self.folded = False
        self.checksums: list[float] = []
        self.owner = None  # the model these weights belong to (marked with FOLDED_ATTR)

    @staticmethod
    def supported(peft_model, weight_decay: float = 0.0, trains_weights: bool = False) -> bool:
        """fp32/fp64 linear layers, not under FSDP / DeepSpeed (they shard the weights the fold restores), and
        no weight decay on weights that train."""
        if any(os.environ.get(k, "").lower() in ("1", "true") for k in _SHARDED):
            return False
        if trains_weights and weight_decay != 0:
            return False
        layers = vector_layers(peft_model)
        return bool(layers) and all(
            isinstance(m.get_base_layer(), torch.nn.Linear) and m.get_base_layer().weight.dtype in
            (torch.float32, torch.float64) for m in layers)

    @classmethod
    def fold_into(cls, peft_model, trains_weights: bool = False) -> tuple[torch.nn.Module, "FoldedVectors"]:
        """Take the attached vectors out of ``peft_model`` and fold them into its weights.

        Returns the plain model (no adapter modules) with the vectors folded in, and the fold, marked on the
        model (:data:`FOLDED_ATTR`) so the serving context can unfold it, and pinning its weights against
        merged decoding while folded."""
        layers = vector_layers(peft_model)
        model = peft_model.unload()
        fold = cls(layers, trains_weights)
        fold.owner = model
        fold.fold()
        setattr(model, FOLDED_ATTR, fold)
        setattr(model, NO_MERGE_ATTR, fold.is_folded)
        return model, fold

    def is_folded(self) -> bool:
        return self.folded

    def _apply(self, sign: float) -> None:
        with torch.no_grad():
            for layer in self.layers:
                weight = layer.get_base_layer().weight
                delta = layer.get_delta_weight(VECTORS_ADAPTER).to(weight.dtype)
                weight.add_(delta) if sign > 0 else weight.sub_(delta)

    def _checksums(self) -> list[float]:
        return [float(m.get_base_layer().weight.detach().double().sum()) for m in self.layers]

    def fold(self) -> None:
        if not self.folded:
            self._apply(1.0)
            self.folded = True
            self.checksums = [] if self.trains_weights else self._checksums()

    def unfold(self) -> None:
        """Take the vectors out of the weights (raises if frozen folded weights changed meanwhile)."""
        if self.folded:
            if not self.trains_weights and self._checksums() != self.checksums:
                raise RuntimeError("frozen weights holding the folded security vectors changed during training")
            self._apply(-1.0)
            self.folded = False

    def restore(self, model=None) -> None:
        """Unfold for good and unmark the model (``model``, or the one folded into)."""
        self.unfold()
        model = model if model is not None else self.owner
        for attr in (FOLDED_ATTR, NO_MERGE_ATTR):
            if model is not None and attr in vars(model):
                delattr(model, attr)

    def __enter__(self) -> "FoldedVectors":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    @contextlib.contextmanager
    def unfolded(self, scale: float = 0.0) -> Iterator[None]:
        """The model as served within the block: the vectors off, or at ``scale`` (e.g. negative: subtracted);
        folded again after it."""
        was = self.folded
        self.unfold()
        trained = [m.scaling[VECTORS_ADAPTER] for m in self.layers]
        try:
            if scale:
                for m in self.layers:
                    m.set_scale(VECTORS_ADAPTER, scale)
                self._apply(1.0)
            yield
        finally:
            if scale:
                self._apply(-1.0)
                for m, value in zip(self.layers, trained):
                    m.scaling[VECTORS_ADAPTER] = value
            if was:
                self.fold()
