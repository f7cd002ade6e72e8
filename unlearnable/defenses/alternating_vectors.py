"""Alternating (min-min) security vectors: re-fitted to the backbone during the fine-tune.

Zhou et al. frame the method as min-min bi-level optimisation; vectors trained once, before the fine-tune, only
explain the harmful data for the backbone they were fitted to, and a backbone that moves fast (a high learning
rate, many steps) can leave their reach. Here, every ``every`` backbone steps the backbone is held still and the
vectors take up to ``steps`` steps on the defence's own harmful data (never the user's), stopping early once
their loss there is at most ``target_loss``; between re-fits they are frozen as always.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import torch

from ..data import encode_pair
from ..errors import UnlearnableError
from ..training import FrozenParamsCallback, UnlearnableTrainer, endless_batches
from ..vectors import finetune
from ..vectors.layers import vector_params
from .base import DEFENSES, DefenseData
from .security_vectors import SecurityVectorsConfig, SecurityVectorsDefense


class AlternatingTrainer(UnlearnableTrainer):
    """A Trainer whose vectors are re-fitted every ``every`` steps, before that step's backbone update."""

    def __init__(self, *args, harmful: Sequence[dict], every: int, steps: int, lr: float, target_loss: float,
                 seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.every, self.refit_steps, self.refit_lr, self.target_loss = every, steps, lr, target_loss
        self.harmful = endless_batches(harmful, self.args.per_device_train_batch_size, self.data_collator, seed)
        self.refit_optimizer: torch.optim.Optimizer | None = None
        self.refits: list[dict] = []  # per re-fit: the step, its steps taken and the vectors' loss before / after

    def training_step(self, model, inputs, num_items_in_batch=None):
        step = self.state.global_step
        if step > 0 and step % self.every == 0 and (not self.refits or self.refits[-1]["step"] != step):
            self.refit(model)
        return super().training_step(model, inputs, num_items_in_batch)

    def refit(self, model) -> dict:
        """Train the vectors (only) for up to ``steps`` steps on the harmful data; the backbone is untouched
        (its gradients too: the vectors' gradients are taken alone)."""
        params = list(vector_params(model).values())
        if self.refit_optimizer is None:
            self.refit_optimizer = torch.optim.AdamW(params, lr=self.refit_lr, weight_decay=0.0)
        model.train()
        losses = []
        for p in params:
            p.requires_grad_(True)
        try:
            for _ in range(self.refit_steps):
                batch = self._prepare_inputs(next(self.harmful))
                with self.compute_loss_context_manager():
                    loss = UnlearnableTrainer.compute_loss(self, model, batch)
                losses.append(float(loss.detach()))
                if losses[-1] <= self.target_loss:
                    break
                for p, g in zip(params, torch.autograd.grad(loss, params)):
                    p.grad = g
                self.refit_optimizer.step()
                self.refit_optimizer.zero_grad(set_to_none=True)
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, FrozenParamsCallback):
                cb.accept()  # the vectors changed here, on purpose; frozen again from now on
        taken = len(losses) - (1 if losses and losses[-1] <= self.target_loss else 0)
        record = {"step": self.state.global_step, "steps": taken, "loss_first": losses[0] if losses else None,
                  "loss_last": losses[-1] if losses else None}
        self.refits.append(record)
        self.log({"refit_steps": float(taken), "refit_loss_first": record["loss_first"] or 0.0,
                  "refit_loss_last": record["loss_last"] or 0.0})  # into the run's log history
        return record


@dataclasses.dataclass
class AlternatingVectorsConfig(SecurityVectorsConfig):
    every: int = dataclasses.field(default=8, metadata={"help": "re-fit the vectors every this many backbone steps"})
    refit_steps: int = dataclasses.field(default=4, metadata={"help": "at most this many vector steps per re-fit"})
    refit_lr: float = dataclasses.field(default=1e-3, metadata={"help": "the vectors' learning rate in a re-fit"})
    refit_target_loss: float = dataclasses.field(default=0.15, metadata={
        "help": "a re-fit stops once the vectors' loss on their harmful data is at most this"})

    def __post_init__(self):
        if self.every < 1 or self.refit_steps < 1:
            raise UnlearnableError("alternating-vectors every and refit_steps must be >= 1")


@DEFENSES.register("alternating-vectors")
class AlternatingVectorsDefense(SecurityVectorsDefense):
    """Security vectors re-fitted every ``every`` steps of the fine-tune to the backbone as it is then (the
    min-min of Zhou et al.), on the defence's own harmful pairs, frozen between re-fits; off when serving."""

    tradeoff_variants = {"alternating": "none"}

    Config = AlternatingVectorsConfig

    def __init__(self, config=None, *, vectors=None, **options):
        super().__init__(config, vectors=vectors, **options)
        self.harmful: list = []

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        super().prepare(model, tokenizer, data, progress=progress)
        self.harmful = list(data.harmful)

    def finetune(self, model, tokenizer, pairs, config, *, progress: bool = True, **kw):
        vectors = self.prepared_vectors()
        if not self.harmful:
            raise RuntimeError(f"{self.name} defence used before prepare() with harmful pairs")
        c = self.config
        rows = [encode_pair(tokenizer, p, config.max_length) for p in self.harmful]
        trainer = functools.partial(AlternatingTrainer, harmful=rows, every=c.every, steps=c.refit_steps,
                                    lr=c.refit_lr, target_loss=c.refit_target_loss, seed=config.seed)
        tuned, history = finetune(model, tokenizer, pairs, config, vectors=vectors, scale=self.scale,
                                  progress=progress, fold=False, trainer_class=trainer, **kw)
        refits = [h for h in history if "refit_steps" in h]
        self.info.setdefault("refits", []).append({"refits": len(refits),
                                                   "steps": sum(int(h["refit_steps"]) for h in refits)})
        return tuned, history
