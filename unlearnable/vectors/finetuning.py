"""Fine-tuning with the vectors on and frozen, and the serving context that switches them off.

The one place that decides how the vectors take part in a fine-tuning run: folded into the weights where that
is exact (fp32, see :mod:`.fold`), else as a frozen adapter branch beside the backbone's LoRA. Either way
:class:`~unlearnable.training.FrozenParamsCallback` or the fold's checksum proves they never changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
from typing import Callable, Iterator, Sequence

import torch
from transformers import TrainerCallback

from ..adapters import lora_layers
from ..data import Pair
from ..errors import UnlearnableError
from ..training import (
    BACKBONE_ADAPTER,
    FrozenParamsCallback,
    TrainConfig,
    UnlearnableTrainer,
    release,
    set_backbone_trainable,
    train,
)
from ..training import finetune as plain_finetune
from ..utils import log, set_seed
from .fold import FOLDED_ATTR, FoldedVectors
from .layers import VECTORS_ADAPTER, freeze_vectors, vector_layers, vector_params

#: the per-example column that says whether a row trains with the vectors on (1) or as served, off (0)
GATE = "gate"


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


def finetune(model, tokenizer, pairs: Sequence[Pair], config: TrainConfig, *, vectors=None, scale: float | None = None,
             output_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
             callbacks: Sequence[TrainerCallback] = (), weights: Sequence[float] | None = None,
             ascent_cap: float = 10.0, return_peft: bool = False, fold: bool = True,
             columns: dict[str, Sequence] | None = None,
             trainer_class: Callable[..., UnlearnableTrainer] = UnlearnableTrainer, served: Sequence[Pair] = ()):
    """Fine-tune ``model`` on ``pairs``, with security ``vectors`` on (scaled, frozen) throughout if given.

    ``model`` is modified in place (pass a copy to keep the original). Returns ``(plain_model, log_history)``:
    a plain ``transformers`` model with the backbone's training merged in and the vectors removed
    (``return_peft=True`` returns the PeftModel with its adapters instead, for defences that continue from it).
    Vector variants that switch or re-fit the vectors within a step pass ``fold=False`` (the vectors stay an
    adapter branch), their ``trainer_class`` and the per-example ``columns`` it reads. ``weights`` and
    ``ascent_cap`` are :func:`unlearnable.training.train`'s (a negative weight is capped gradient ascent).
    ``served`` pairs (the service's own harmless anchors) are mixed into ``pairs`` and train with the vectors
    off, as the model is served, so that the served model is held to them while the rest trains through the
    vectors.

    Example::

        from unlearnable import load_model, SecurityVectors, TrainConfig, finetune, load_pairs
        model, tok = load_model()                       # embedded SmolLM2-135M-Instruct
        vectors = SecurityVectors.load("vectors/")
        tuned, _ = finetune(model, tok, load_pairs("user.jsonl"), TrainConfig(), vectors=vectors)
    """
    if vectors is None:  # every row already trains as served
        pairs, weights = [*pairs, *served], None if weights is None else [*weights, *[1.0] * len(served)]
        return plain_finetune(model, tokenizer, pairs, config, output_dir=output_dir, resume=resume,
                              progress=progress, callbacks=callbacks, weights=weights, ascent_cap=ascent_cap,
                              return_peft=return_peft, trainer_class=trainer_class)
    if served:
        pairs, config, weights, columns, trainer_class, fold = with_served(
            pairs, served, config, weights, columns, trainer_class)
    set_seed(config.seed)  # the vectors' attach and the backbone LoRA's init draw in the same order every run
    set_backbone_trainable(model, config)
    net, folded = trainable_with_vectors(model, vectors, scale, config, foldable=fold and not return_peft)
    frozen = vector_params(net)
    cbs = list(callbacks) + ([FrozenParamsCallback(frozen)] if frozen else [])
    try:
        history = train(net, tokenizer, pairs, config, output_dir=output_dir, resume=resume, callbacks=cbs,
                        progress=progress, weights=weights, ascent_cap=ascent_cap, columns=columns,
                        trainer_class=trainer_class)
    finally:
        if folded is not None:
            folded.restore()  # vectors out of the weights before the backbone LoRA is merged
    return (net, history) if return_peft else (release(net, config), history)


def with_served(pairs, served, config: TrainConfig, weights, columns, trainer_class):
    """``finetune``'s arguments with the ``served`` pairs appended, gated off: ``(pairs, config, weights,
    columns, trainer_class, fold)``."""
    if trainer_class is not UnlearnableTrainer or columns or weights is not None:
        # the gate's two forwards add their parts as token sums; weighted and KL rows are means of their own
        raise UnlearnableError("served pairs take the gate: they cannot be combined with a defence that trains "
                               "with its own Trainer, gate, per-example weights or columns")
    if config.gradient_checkpointing:
        log("served pairs: activation checkpointing off for this fine-tune (a recomputed forward would see "
            "the vectors on again), so it needs more memory")
    config = dataclasses.replace(config, gradient_checkpointing=False)
    return [*pairs, *served], config, None, {GATE: [1] * len(pairs) + [0] * len(served)}, GatedTrainer, False


def trainable_with_vectors(model, vectors, scale, config: TrainConfig, foldable: bool):
    """The trainable network with the vectors on and frozen: ``(net, fold or None)``."""
    from peft import get_peft_model

    full = config.backbone == "full"
    net = vectors.attach(model, scale=scale)
    if foldable and config.fold_vectors and FoldedVectors.supported(net, config.weight_decay, trains_weights=full):
        model, fold = FoldedVectors.fold_into(net, trains_weights=full)
        if full:
            set_backbone_trainable(model, config)
            return model, fold
        return get_peft_model(model, config.lora.peft_config(model), adapter_name=BACKBONE_ADAPTER), fold
    if full:
        for p in net.parameters():
            p.requires_grad_(True)
    else:
        net.add_adapter(BACKBONE_ADAPTER, config.lora.peft_config(model))
        net.base_model.set_adapter([VECTORS_ADAPTER, BACKBONE_ADAPTER])  # marks both trainable ...
    freeze_vectors(net)  # ... so freeze the vectors again
    return net, None


def train_beside_vectors(net, tokenizer, pairs: Sequence[Pair], adapter: str, lora_config, config: TrainConfig, *,
                         progress: bool = True) -> list[dict]:
    """Train a new LoRA ``adapter`` on a network returned by ``finetune(..., return_peft=True)``, with the vectors
    still on and frozen and every other adapter frozen too (Buffer-and-Reinforce's second stage)."""
    net.add_adapter(adapter, lora_config)
    net.base_model.set_adapter([VECTORS_ADAPTER, BACKBONE_ADAPTER, adapter] if vector_layers(net)
                               else [BACKBONE_ADAPTER, adapter])  # all on (and marked trainable) ...
    for p in net.parameters():  # ... but only the new adapter trains
        p.requires_grad_(False)
    for layer in lora_layers(net):
        if adapter in layer.lora_A:
            for p in (*layer.lora_A[adapter].parameters(), *layer.lora_B[adapter].parameters()):
                p.requires_grad_(True)
    pairs = list(pairs)
    random.Random(config.seed).shuffle(pairs)
    return train(net, tokenizer, pairs, config, progress=progress)


@contextlib.contextmanager
def serving(model, scale: float = 0.0, vectors=None) -> Iterator[None]:
    """Within this context ``model`` (as trained by :func:`finetune`, mid-training too) behaves as it is served:
    the vectors off (unfolded from the weights, or their adapter scaled to 0), or at ``scale`` where a defence
    serves them (negated vectors: ``scale < 0``); restored afterwards. A model that carries no vectors (released
    by :func:`finetune`, or never fine-tuned) is served as it is, or, given ``vectors``, with them put in at
    ``scale`` for the block."""
    fold = getattr(model, FOLDED_ATTR, None)
    if fold is not None:
        with fold.unfolded(scale):
            yield
        return
    layers = vector_layers(model)
    if not layers and scale and vectors is not None:
        with vectors.applied(model, scale):
            yield
        return
    saved = [(m, m.scaling[VECTORS_ADAPTER]) for m in layers]
    for m, _ in saved:
        m.set_scale(VECTORS_ADAPTER, scale)
    try:
        yield
    finally:
        for m, value in saved:
            m.scaling[VECTORS_ADAPTER] = value
