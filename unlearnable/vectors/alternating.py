"""Alternating (min-min) vectors: re-fit the vectors to the moving backbone during the user's fine-tune.

Zhou et al. frame the method as min-min bi-level optimisation; vectors trained once, before the fine-tune, only
explain the harmful data for the backbone they were fitted to, and a backbone that moves fast (a high learning
rate, many steps) can leave their reach. Here, every ``every`` backbone steps the backbone is held still and the
vectors take up to ``steps`` steps on the defence's own harmful data (never the user's), stopping early once
their loss there is at most ``target_loss``; between re-fits they are frozen as always.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..training import FrozenParamsCallback, UnlearnableTrainer, endless_batches
from .layers import vector_params


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
