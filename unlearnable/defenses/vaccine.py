"""Vaccine (Huang et al., NeurIPS 2024): perturbation-aware alignment, baked into the weights."""

from __future__ import annotations

import copy
import dataclasses
import functools
import random
from typing import Callable, Sequence

import torch

from ..adapters import LoraSpec
from ..errors import UnlearnableError
from ..models import attention_modules, block_hidden, decoder_blocks, forward_hooks
from ..training import TrainConfig, UnlearnableTrainer, finetune, require_one_process
from .base import DEFENSES, Defense, DefenseData, HardeningBudget, tunable

SITES = ("attention", "block")


@dataclasses.dataclass
class VaccineConfig(HardeningBudget):
    max_steps: int = dataclasses.field(default=400, metadata={
        "help": "optimizer steps of the alignment (the reference: 5,000 pairs x 50 epochs at batch 5, about "
                "50,000; 0: epochs over the data)"})
    rho: float = tunable(2.0, 0.1, 20.0, help="norm of the hidden-state perturbation, over all perturbed "
                                             "sub-layers and tokens together")
    site: str = dataclasses.field(default="attention", metadata={
        "help": "where the perturbation is added: attention (each block's self-attention output, as the "
                "reference hooks it) or block (each decoder block's output)"})
    lr: float = 1e-3
    epochs: float = dataclasses.field(default=3.0, metadata={"help": "passes over the alignment data (max_steps 0)"})
    batch_size: int = 16
    lora: LoraSpec = dataclasses.field(default_factory=lambda: LoraSpec(r=16, alpha=4, dropout=0.1), metadata={
        "help": "the alignment LoRA (the reference's r 16, alpha 4, dropout 0.1 on every projection)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "order of the alignment data"})

    def __post_init__(self):
        if self.rho < 0:
            raise UnlearnableError("vaccine rho must be >= 0")
        if self.site not in SITES:
            raise UnlearnableError(f"vaccine site must be one of {', '.join(SITES)}, not {self.site!r}")


def perturbation_sites(model, site: str) -> tuple[list[torch.nn.Module], str]:
    """The modules whose outputs Vaccine perturbs, and what they are (a model without a separable attention
    sub-layer falls back to its blocks, and says so)."""
    if site == "attention":
        attention = attention_modules(model)
        if attention is not None:
            return attention, "attention"
        return decoder_blocks(model), "block (no separable attention module in this model's blocks)"
    return decoder_blocks(model), "block"


def vaccine_perturbation(trainer: UnlearnableTrainer, model, inputs: dict, rho: float,
                         sites: list[torch.nn.Module] | None = None) -> list[torch.Tensor]:
    """``rho * g_l / ||g||`` per site ``l`` (default: each block): ``g_l`` the alignment loss's gradient with
    respect to that sub-layer's output, the norm taken over every site together (the harmful embedding drift the
    paper guards against, at its worst within a ball of radius ``rho``). Parameter gradients are left untouched."""
    blocks = sites if sites is not None else decoder_blocks(model)
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
    """A forward hook adding site ``i``'s perturbation to its output (a constant: the gradient flows through the
    sub-layer as without it, as in the paper)."""

    def shift(i, module, args, output):
        hidden = block_hidden(output) + perturbations[i]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return shift


class VaccineTrainer(UnlearnableTrainer):
    """Each step: one forward/backward to find the perturbation, a second with it added to every site's output
    (each attention sub-layer by default), whose parameter gradients make the update."""

    def __init__(self, *args, rho: float, site: str = "attention", **kwargs):
        super().__init__(*args, **kwargs)
        self.rho, self.site = rho, site
        self.sites_used: str | None = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        inputs = self._prepare_inputs(inputs)
        sites, self.sites_used = perturbation_sites(model, self.site)
        perturbations = vaccine_perturbation(self, model, inputs, self.rho, sites)
        with forward_hooks(sites, shifted_by(perturbations)):
            return super().training_step(model, inputs, num_items_in_batch)


@DEFENSES.register("vaccine")
class VaccineDefense(Defense):
    """Before release, align (the provider's refusal and harmless pairs, the harness's alignment recipe: a LoRA
    merged into the weights) while every attention sub-layer's output (``site``) is pushed by the perturbation of
    norm ``rho`` that raises the alignment loss most, so that the aligned behaviour survives the drift a later harmful
    fine-tune causes. Counts under both threat models, since the attacker fine-tunes the hardened weights."""

    Config = VaccineConfig

    def harden(self, model, tokenizer, data: DefenseData, *, progress: bool = True):
        require_one_process("vaccine's hardening")
        c = self.config
        alignment = list(data.refusals) + list(data.harmless)
        if not data.refusals:
            raise UnlearnableError("vaccine needs refusal pairs in DefenseData")
        random.Random(c.seed).shuffle(alignment)
        cfg = TrainConfig(lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, seed=c.seed, lora=c.lora, **c.budget())
        trainer = functools.partial(VaccineTrainer, rho=c.rho, site=c.site)
        hardened, history = finetune(copy.deepcopy(model), tokenizer, alignment, cfg, progress=progress,
                                     trainer_class=trainer, callbacks=c.callbacks())
        self.info["harden_history"] = [h for h in history if "loss" in h]
        self.info["perturbed"] = perturbation_sites(model, c.site)[1]
        return hardened
