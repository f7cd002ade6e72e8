"""Lisa (Huang et al., NeurIPS 2024): fine-tuning alternates alignment steps and user steps, each phase pulled
toward the weights the other phase left behind."""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from typing import Sequence

import torch

from ..data import Pair
from ..errors import UnlearnableError
from ..training import TrainConfig, UnlearnableTrainer, finetune, trainable_params, world_size
from .base import DEFENSES, SERVICE, Defense, DefenseData, tunable

ALIGN, USER = "alignment", "user"


@dataclasses.dataclass
class LisaConfig:
    rho: float = tunable(1.0, 1e-3, 10.0, help="weight of the proximal term rho/2 ||w - w_other||^2 (w_other: "
                                             "where the other phase left off)")
    align_steps: int = dataclasses.field(default=1, metadata={
        "help": "optimizer steps on the alignment data at the start of each cycle"})
    user_steps: int = dataclasses.field(default=9, metadata={
        "help": "optimizer steps on the user's data after them"})
    prox_warmup: float = dataclasses.field(default=0.1, metadata={
        "help": "the proximal term switches on once more than this share of the run's steps is done (the "
                "reference's 10 %: from the first step it holds the user's phase near the aligned weights and "
                "costs benign accuracy)"})

    def __post_init__(self):
        if self.rho < 0 or self.align_steps < 1 or self.user_steps < 1:
            raise UnlearnableError("lisa needs rho >= 0, align_steps >= 1 and user_steps >= 1")
        if not 0 <= self.prox_warmup < 1:
            raise UnlearnableError("lisa prox_warmup is a share of the steps in [0, 1)")


def phase_of(step: int, align_steps: int, user_steps: int) -> str:
    """The phase of optimizer step ``step`` (from 0): each cycle is ``align_steps`` then ``user_steps``."""
    return ALIGN if step % (align_steps + user_steps) < align_steps else USER


def interleaved(user: Sequence[Pair], alignment: Sequence[Pair], steps: int, rows_per_step: int, align_steps: int,
                user_steps: int, seed: int) -> list[Pair]:
    """The training rows in step order: step ``t`` takes ``rows_per_step`` rows from its phase's data, each data
    set reshuffled (seeded) every time it runs out."""
    streams = {ALIGN: _cycle(alignment, seed), USER: _cycle(user, seed + 1)}
    return [next(streams[phase_of(t, align_steps, user_steps)]) for t in range(steps) for _ in range(rows_per_step)]


def _cycle(pairs: Sequence[Pair], seed: int):
    if not pairs:
        raise UnlearnableError("no training examples")
    rng = random.Random(seed)
    while True:
        order = list(pairs)
        rng.shuffle(order)
        yield from order


def proximal(params: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor], rho: float) -> torch.Tensor:
    """``rho / 2 * ||w - w_anchor||^2`` over the trainable tensors."""
    return rho / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))


class LisaTrainer(UnlearnableTrainer):
    """Takes its rows in the order given (they are laid out step by step by :func:`interleaved`) and adds the
    proximal term toward the weights at the last phase switch, i.e. where the other phase left off, from optimizer
    step ``warmup_steps`` on."""

    def __init__(self, *args, rho: float, align_steps: int, user_steps: int, warmup_steps: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho, self.schedule, self.warmup_steps = rho, (align_steps, user_steps), warmup_steps
        self.phase: str | None = None
        self.anchor: list[torch.Tensor] = []
        self.phases: dict[int, str] = {}  # optimizer step -> phase, as trained
        self.proximal_terms: dict[int, torch.Tensor] = {}  # optimizer step -> the proximal term added, as trained

    def _get_train_sampler(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        params = list(trainable_params(model).values())
        phase = phase_of(self.state.global_step, *self.schedule)
        if phase != self.phase:  # a switch: the weights now are the other phase's last ones
            self.phase, self.anchor = phase, [p.detach().clone() for p in params]
        self.phases[self.state.global_step] = phase
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, rest = (out[0], out[1:]) if return_outputs else (out, ())
        rho = self.rho if self.state.global_step >= self.warmup_steps else 0.0
        prox = proximal(params, self.anchor, rho)
        self.proximal_terms[self.state.global_step] = prox.detach()  # a tensor: no device sync per step
        if num_items_in_batch is not None:  # the CE is already a share of the accumulated batch; so is this
            prox = prox / self.current_gradient_accumulation_steps
        loss = loss + prox
        return (loss, *rest) if return_outputs else loss


@DEFENSES.register("lisa")
class LisaDefense(Defense):
    """Lazy safety alignment in the service's fine-tuning: each cycle runs ``align_steps`` optimizer steps on the
    provider's alignment data (its refusal and harmless pairs, the harness's alignment recipe) and then
    ``user_steps`` on the user's, with a proximal term ``rho/2 ||w - w_other||^2`` pulling each phase toward the
    weights the other phase ended with, switched on after the first ``prox_warmup`` share of the steps. The run
    keeps the user's step budget: the alignment steps are a share of it. Service threat model only."""

    threat_models = (SERVICE,)
    Config = LisaConfig

    def __init__(self, config: LisaConfig | None = None, **options):
        super().__init__(config, **options)
        self.alignment: list[Pair] = []

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        if not data.refusals:
            raise UnlearnableError("lisa needs alignment (refusal) pairs in DefenseData.refusals")
        self.alignment = list(data.refusals) + list(data.harmless)

    def finetune(self, model, tokenizer, pairs, config: TrainConfig, *, progress: bool = True, **kw):
        if not self.alignment:
            raise UnlearnableError(f"{self.name} defence used before prepare()")
        c = self.config
        # under DDP an optimizer step takes the next world x batch x accumulation rows in order, each process
        # its own batches of them (accelerate's sharding of a sequential sampler): one step, one phase
        rows = config.batch_size * config.grad_accum * world_size()
        steps = config.max_steps if config.max_steps > 0 else math.ceil(config.epochs * math.ceil(len(pairs) / rows))
        ordered = interleaved(list(pairs), self.alignment, steps, rows, c.align_steps, c.user_steps, config.seed)
        trainer = functools.partial(LisaTrainer, rho=c.rho, align_steps=c.align_steps, user_steps=c.user_steps,
                                    warmup_steps=math.floor(c.prox_warmup * steps) + 1 if c.prox_warmup else 0)
        return finetune(model, tokenizer, ordered, dataclasses.replace(config, max_steps=steps), progress=progress,
                        trainer_class=trainer, **kw)
