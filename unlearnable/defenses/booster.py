"""Booster (Huang et al., ICLR 2025): alignment that attenuates the harmful perturbation, baked into the weights."""

from __future__ import annotations

import copy
import dataclasses
import functools
import random
from typing import Sequence

import torch

from ..adapters import LoraSpec
from ..data import encode_pair
from ..errors import UnlearnableError
from ..training import TrainConfig, UnlearnableTrainer, endless_batches, finetune, require_one_process, trainable_params
from .base import DEFENSES, Defense, DefenseData, HardeningBudget, tunable


@dataclasses.dataclass
class BoosterConfig(HardeningBudget):
    max_steps: int = dataclasses.field(default=300, metadata={
        "help": "optimizer steps of the alignment, three passes each (the reference's smooth_align.sh: 5,000 "
                "harmful pairs, about 10,000 steps; 0: epochs over the data)"})
    lam: float = tunable(5.0, 0.5, 50.0, help="lambda: weight of the harmful loss's drop after one normalised "
                                               "harmful step")
    alpha: float = tunable(0.1, 0.01, 1.0, help="length of that normalised harmful step")
    lr: float = 5e-4
    epochs: float = dataclasses.field(default=3.0, metadata={"help": "passes over the alignment data (max_steps 0)"})
    batch_size: int = 16
    lora: LoraSpec = dataclasses.field(
        default_factory=lambda: LoraSpec(r=32, alpha=4, target_modules="q_proj,k_proj,v_proj"), metadata={
            "help": "the alignment LoRA (the reference's r 32, alpha 4 on q, k, v; other architectures name "
                    "their projections differently, e.g. c_attn in GPT-2, or use all-linear)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "order of the alignment and harmful data"})


def booster_gradients(trainer: UnlearnableTrainer, model, params: Sequence[torch.Tensor], harmful: dict,
                      alpha: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(grad h(w) - grad h(w - alpha g/||g||), h(w) - h(w - alpha g/||g||))``, ``h`` the harmful loss and
    ``g = grad h(w)``: the gradient and value of the harmful loss's drop, the step held fixed (first order, as
    the paper); the weights are restored bit for bit."""
    g, before = _grads(trainer, model, params, harmful)
    norm = torch.sqrt(sum((x.float() ** 2).sum() for x in g)).clamp_min(1e-12)
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, x in zip(params, g):
            p.sub_(alpha * x / norm)
    try:
        g_after, after = _grads(trainer, model, params, harmful)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    return [a - b for a, b in zip(g, g_after)], before - after


def _grads(trainer, model, params, batch) -> tuple[list[torch.Tensor], torch.Tensor]:
    with trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(model, batch)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if x is None else x for p, x in zip(params, grads)], loss.detach()


class BoosterTrainer(UnlearnableTrainer):
    """Each step: the alignment loss's gradient (the Trainer's own backward) plus ``lam`` times the gradient of
    the harmful loss's drop on the next harmful batch: three forward/backward passes per step."""

    def __init__(self, *args, harmful: Sequence[dict], lam: float, alpha: float, seed: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.lam, self.alpha = lam, alpha
        self.harmful = endless_batches(harmful, self.args.per_device_train_batch_size, self.data_collator, seed)

    def training_step(self, model, inputs, num_items_in_batch=None):
        params = list(trainable_params(model).values())
        model.train()
        extra, drop = booster_gradients(self, model, params, self._prepare_inputs(next(self.harmful)), self.alpha)
        loss = super().training_step(model, inputs, num_items_in_batch)
        share = self.lam / self.current_gradient_accumulation_steps
        with torch.no_grad():
            for p, x in zip(params, extra):
                p.grad = share * x if p.grad is None else p.grad.add_(share * x)
        return loss + share * drop


#: the fused query-key-value projections of architectures without separate q, k, v modules (GPT-2, GPT-NeoX / Falcon,
#: Phi-3, MPT)
FUSED_QKV = ("c_attn", "query_key_value", "qkv_proj", "Wqkv")


def has_modules(model, names: Sequence[str]) -> bool:
    """Whether ``model`` has a module whose name ends in each of ``names``."""
    ends = {n.rpartition(".")[2] for n, _ in model.named_modules()}
    return all(name in ends for name in names)


@DEFENSES.register("booster")
class BoosterDefense(Defense):
    """Before release, align with ``L_align(w) + lam * (h(w) - h(w - alpha grad h(w) / ||grad h(w)||))``: the
    alignment loss (the provider's refusal and harmless pairs, the harness's alignment recipe) plus the drop of
    the harmful loss ``h`` (its harmful pairs) that one normalised harmful step would bring, so that harmful
    fine-tuning later finds less to descend. A LoRA merged into the weights, as the harness aligns. Counts under
    both threat models, since the attacker fine-tunes the hardened weights."""

    Config = BoosterConfig

    def lora_for(self, model) -> LoraSpec:
        """The configured LoRA; where this model has no modules of the configured names (the reference's q, k, v
        are Llama's names), its fused query-key-value projection (GPT-2's ``c_attn``, ...), else all linear
        layers; either said in ``info``."""
        lora = self.config.lora
        if lora.target_modules == "all-linear" or has_modules(model, lora.targets()):
            return lora
        fused = next((name for name in FUSED_QKV if has_modules(model, [name])), None)
        self.info["lora_targets"] = (
            f"{fused or 'all-linear'}: this model has no {lora.target_modules} modules (the reference's names)"
            + (", its fused query-key-value projection instead" if fused else
               "; set lora.target_modules to its attention projections"))
        return dataclasses.replace(lora, target_modules=fused or "all-linear")

    def harden(self, model, tokenizer, data: DefenseData, *, progress: bool = True):
        require_one_process("booster's hardening")
        c = self.config
        alignment, harmful = list(data.refusals) + list(data.harmless), list(data.harmful)
        if not data.refusals or not harmful:
            raise UnlearnableError("booster needs refusal pairs and harmful pairs in DefenseData")
        random.Random(c.seed).shuffle(alignment)
        cfg = TrainConfig(lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, seed=c.seed, lora=self.lora_for(model),
                          **c.budget())
        rows = [encode_pair(tokenizer, p, cfg.max_length) for p in harmful]
        trainer = functools.partial(BoosterTrainer, harmful=rows, lam=c.lam, alpha=c.alpha, seed=c.seed)
        hardened, history = finetune(copy.deepcopy(model), tokenizer, alignment, cfg, progress=progress,
                                     trainer_class=trainer, callbacks=c.callbacks())
        self.info["harden_history"] = [h for h in history if "loss" in h]
        return hardened
