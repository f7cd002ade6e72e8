"""Vaccine (Huang et al., NeurIPS 2024): perturbation-aware alignment, baked into the weights."""

from __future__ import annotations

import copy
import dataclasses
import functools
import random
from typing import Callable, Sequence

import torch

from ..errors import UnlearnableError
from ..models import block_hidden, decoder_blocks, forward_hooks
from ..training import TrainConfig, UnlearnableTrainer, finetune
from .base import DEFENSES, Defense, DefenseData


@dataclasses.dataclass
class VaccineConfig:
    rho: float = dataclasses.field(default=2.0, metadata={
        "help": "norm of the hidden-state perturbation, over all blocks and tokens together"})
    lr: float = 1e-3
    epochs: float = dataclasses.field(default=3.0, metadata={"help": "passes over the alignment data"})
    batch_size: int = 16
    seed: int = dataclasses.field(default=0, metadata={"help": "order of the alignment data"})

    def __post_init__(self):
        if self.rho < 0:
            raise UnlearnableError("vaccine rho must be >= 0")


def vaccine_perturbation(trainer: UnlearnableTrainer, model, inputs: dict, rho: float) -> list[torch.Tensor]:
    """``rho * g_l / ||g||`` per block ``l``: ``g_l`` the alignment loss's gradient with respect to block ``l``'s
    hidden output, the norm taken over every block together (the harmful embedding drift the paper guards
    against, at its worst within a ball of radius ``rho``). Parameter gradients are left untouched."""
    blocks = decoder_blocks(model)
    outputs: list = [None] * len(blocks)

    def keep(i, module, args, output):
        outputs[i] = block_hidden(output)

    with forward_hooks(blocks, keep), trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(model, inputs)
    live = [i for i, o in enumerate(outputs) if o is not None and o.requires_grad]
    grads = dict(zip(live, torch.autograd.grad(loss, [outputs[i] for i in live], allow_unused=True)))
    g = [grads.get(i) if grads.get(i) is not None else torch.zeros_like(o) for i, o in enumerate(outputs)]
    norm = torch.sqrt(sum((x.float() ** 2).sum() for x in g))
    return [(rho * x.float() / (norm + 1e-7)).to(x.dtype).detach() for x in g]


def shifted_by(perturbations: Sequence[torch.Tensor]) -> Callable:
    """A forward hook adding block ``i``'s perturbation to its hidden output (a constant: the gradient flows
    through the block as without it, as in the paper)."""

    def shift(i, module, args, output):
        hidden = block_hidden(output) + perturbations[i]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return shift


class VaccineTrainer(UnlearnableTrainer):
    """Each step: one forward/backward to find the perturbation, a second with it added to every block's hidden
    output, whose parameter gradients make the update."""

    def __init__(self, *args, rho: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho = rho

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        inputs = self._prepare_inputs(inputs)
        perturbations = vaccine_perturbation(self, model, inputs, self.rho)
        with forward_hooks(decoder_blocks(model), shifted_by(perturbations)):
            return super().training_step(model, inputs, num_items_in_batch)


@DEFENSES.register("vaccine")
class VaccineDefense(Defense):
    """Before release, align (the provider's refusal and harmless pairs, the harness's alignment recipe: a LoRA
    merged into the weights) while every block's hidden output is pushed by the perturbation of norm ``rho``
    that raises the alignment loss most, so that the aligned behaviour survives the drift a later harmful
    fine-tune causes. Counts under both threat models, since the attacker fine-tunes the hardened weights."""

    Config = VaccineConfig

    def harden(self, model, tokenizer, data: DefenseData, *, progress: bool = True):
        c = self.config
        alignment = list(data.refusals) + list(data.harmless)
        if not data.refusals:
            raise UnlearnableError("vaccine needs refusal pairs in DefenseData")
        random.Random(c.seed).shuffle(alignment)
        cfg = TrainConfig(lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, seed=c.seed)
        trainer = functools.partial(VaccineTrainer, rho=c.rho)
        hardened, history = finetune(copy.deepcopy(model), tokenizer, alignment, cfg, progress=progress,
                                     trainer_class=trainer)
        self.info["harden_history"] = [h for h in history if "loss" in h]
        return hardened
