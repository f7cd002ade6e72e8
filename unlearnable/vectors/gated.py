"""Gated vectors: the vectors act only on the examples they explain.

The vectors lower the loss of the harmful data they were trained on, and raise it on data they know nothing
about (a harmless task learned *through* that distortion is partly lost when they are switched off). The gate
is the per-example loss gap, loss with the vectors off minus loss with them on, measured once on the model as
handed to the fine-tune: above ``threshold`` the example trains with the vectors on, otherwise exactly as with
no defence. Deciding once, before any step, keeps the gate open on the harmful examples even after the
backbone starts to learn them (their gap would shrink as it does).
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from ..data import Pair
from ..generation import example_losses
from ..training import UnlearnableTrainer
from .finetuning import serving

GATE = "gate"


def loss_gaps(model, tokenizer, vectors, pairs: Sequence[Pair], scale: float | None, *,
              precision: str = "auto") -> list[float]:
    """Per pair: loss with ``vectors`` off minus loss with them on (at ``scale``). The vectors are attached to
    ``model`` itself (no copy: a large model fits once) and removed after; which of its weights train is kept."""
    trains = {name: p.requires_grad for name, p in model.named_parameters()}
    net = vectors.attach(model, scale=scale)
    try:
        on = example_losses(net, tokenizer, pairs, precision=precision)
        with serving(net):
            off = example_losses(net, tokenizer, pairs, precision=precision)
    finally:
        net.unload()
        for name, p in model.named_parameters():
            p.requires_grad_(trains[name])
    return [b - a for a, b in zip(on, off)]


class GatedTrainer(UnlearnableTrainer):
    """Rows whose ``gate`` is 1 train with the vectors on, the rest with them off (two forwards when a batch
    mixes both); the loss is the token-weighted whole, as one forward would give."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if GATE not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        gate = inputs[GATE].bool()
        rest = {k: v for k, v in inputs.items() if k != GATE}
        parts = []
        for rows, context in ((gate, contextlib.nullcontext), (~gate, lambda: serving(model))):
            if bool(rows.any()):
                sub = {k: v[rows] for k, v in rest.items()}
                with context():
                    loss = super().compute_loss(model, sub, num_items_in_batch=num_items_in_batch)
                parts.append((loss, (sub["labels"][:, 1:] != -100).sum()))
        if num_items_in_batch is not None:  # each part is already its token sum over the batch's token count
            loss = sum(part for part, _ in parts)
        else:
            loss = sum(part * n for part, n in parts) / torch.stack([n for _, n in parts]).sum().clamp(min=1)
        return (loss, None) if return_outputs else loss
