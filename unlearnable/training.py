"""One Trainer-based fine-tuning loop: response-only loss, weighted and KL variants, LoRA or full backbone.

Built on :class:`transformers.Trainer`, so ``accelerate launch`` (DDP / FSDP / DeepSpeed) scales it unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from transformers import SchedulerType, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler as TrainerLengthGroupedSampler

from . import interrupts
from .adapters import LoraSpec
from .config import normalize_numbers
from .data import Pair, encode_pairs, pad_batch
from .errors import UnlearnableError
from .losses import checked_split, per_row, token_losses
from .runs import latest_checkpoint, mark_complete
from .utils import PRECISIONS, release_memory, resolve_precision, set_seed

#: what a training run trains: a LoRA on the backbone (merged after) or every backbone weight
BACKBONES = ("lora", "full")
#: the learning-rate schedules transformers knows (``lr_scheduler_type``)
SCHEDULERS = tuple(s.value for s in SchedulerType)
#: the trainable tensors of a checkpoint (adapters and/or backbone weights), see UnlearnableTrainer._save
CHECKPOINT_WEIGHTS = "trainable.safetensors"


@dataclasses.dataclass
class TrainConfig:
    """How a model (or an adapter on it) is trained. Shared by alignment, vectors and fine-tuning."""

    #: flat key names of earlier versions, still accepted in config files
    __aliases__ = {"lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
                   "target_modules": "lora.target_modules", "lora_top_layers": "lora.top_layers"}
    #: keys that moved to the component that uses them: where to set them now
    __retired__ = {"kl_weight": "the vectors' benign_weight (vectors.benign_weight)",
                   "ascent_cap": "adversarial-loss's cap (defense_options.adversarial-loss.cap)"}

    backbone: str = dataclasses.field(default="lora", metadata={
        "help": "lora: train a LoRA on the backbone and merge it; full: train every backbone weight"})
    lr: float = dataclasses.field(default=1e-3, metadata={"help": "peak learning rate"})
    epochs: float = dataclasses.field(default=1.0, metadata={"help": "passes over the data (ignored if max_steps > 0)"})
    max_steps: int = dataclasses.field(default=-1, metadata={
        "help": "stop after this many optimizer steps (-1: train for epochs)", "min": -1})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "examples per optimizer step (per process)"})
    grad_accum: int = dataclasses.field(default=1, metadata={"help": "gradient accumulation steps"})
    max_length: int = dataclasses.field(default=64, metadata={"help": "tokens per example (prompt + response)"})
    lora: LoraSpec = dataclasses.field(default_factory=LoraSpec, metadata={
        "help": "the backbone LoRA (backbone=lora)"})
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    scheduler: str = dataclasses.field(default="linear", metadata={"help": "transformers lr scheduler name",
                                                                   "choices": SCHEDULERS})
    seed: int = 0
    precision: str = dataclasses.field(default="auto", metadata={"help": "auto (bf16 where fast) | fp32 | bf16",
                                                                 "choices": PRECISIONS})
    logging_steps: int = 5
    save_steps: int = dataclasses.field(default=0, metadata={"help": "checkpoint every N steps for resume (0 = off)"})
    gradient_checkpointing: bool = dataclasses.field(default=True, metadata={
        "help": "recompute activations in the backward pass instead of keeping them: a fraction of the training "
                "memory for 7-20 % more time on the default model (the same weights; benchmarks/RESULTS.md); off "
                "where the model does not support it"})
    group_by_length: bool = dataclasses.field(default=True, metadata={"help": "batch examples of similar length "
                                                                               "(less padding)"})
    spread_mixed: bool = dataclasses.field(default=False, metadata={
        "help": "with group_by_length: spread the rows a defence mixes in (refusals, anchors) evenly over the "
                "batches; otherwise the short ones share batches of their own, so that some steps train on "
                "nothing else and a curve counted in steps depends on where those batches fall"})
    fold_vectors: bool = dataclasses.field(default=True, metadata={
        "help": "with security vectors: fold them into the weights for training (same function, plain step cost; "
                "fp32 weights, no weight decay; read by unlearnable.vectors, see vectors/fold.py)"})

    def __post_init__(self):
        normalize_numbers(self)
        if self.backbone not in BACKBONES:
            raise UnlearnableError(f"backbone must be 'lora' or 'full', not {self.backbone!r}")
        if self.lr <= 0 or self.batch_size < 1 or self.max_length < 8:
            raise UnlearnableError("lr must be > 0, batch_size >= 1 and max_length >= 8")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise UnlearnableError("set epochs > 0 or max_steps > 0")


class Collator:
    """Dynamic padding to the longest example in the batch; labels padded with -100."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, rows: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        batch = pad_batch(rows, self.pad)
        for name in rows[0].keys() - batch.keys():  # per-example columns: weight, kl, gate, ...
            batch[name] = torch.tensor([r[name] for r in rows])
        return batch


class UnlearnableTrainer(Trainer):
    """Trainer with a response-only loss that computes logits only where there are targets, a slice at a time.

    The LM head over a 50k-token vocabulary is a large share of a small model's step and of its memory; prompt
    positions have no targets, so they skip it (:func:`unlearnable.losses.token_losses`). Frozen adapters (the
    security vectors) stay frozen: :class:`FrozenParamsCallback` re-checks them every step.
    """

    #: per-example loss cap for negative-weight (gradient ascent) examples, so ascent cannot diverge
    ascent_cap: float = 10.0  # set by train(ascent_cap=...): the caller that weights examples chooses it

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "weight" in inputs:
            return self._weighted_loss(model, inputs, return_outputs)
        if "kl" in inputs:
            return self._kl_loss(model, inputs, return_outputs)
        losses, mask = token_losses(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        loss_sum = losses.sum()
        if num_items_in_batch is not None:
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes
        else:
            loss = loss_sum / mask.sum().clamp(min=1)
        return (loss, {"loss": loss}) if return_outputs else loss

    def _weighted_loss(self, model, inputs, return_outputs):
        """sum_i w_i * CE_i / n, with CE_i the token-mean loss of example i (capped where w_i < 0)."""
        losses, mask = token_losses(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        ce = per_row(losses, mask) / mask.sum(1).clamp(min=1)
        weight = inputs["weight"]
        ce = torch.where(weight < 0, ce.clamp(max=self.ascent_cap), ce)
        loss = (weight.to(ce.dtype) * ce).mean()
        return (loss, {"loss": loss}) if return_outputs else loss

    #: weight of the KL term for rows flagged ``kl`` (set by train(kl_weight=...): the vectors' benign_weight)
    kl_weight: float = 1.0

    def _kl_loss(self, model, inputs, return_outputs):
        """CE on ordinary rows; on rows flagged ``kl``, KL(p_adapters_off || p_adapters_on) over response tokens.

        Used to train adapters that change harmful answers but leave harmless ones alone (the teacher is the
        same network with its adapters disabled, so no second model is held in memory)."""
        labels, flag = inputs["labels"], inputs["kl"].bool()
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits = outputs.logits[:, :-1].float()
        tgt = labels[:, 1:]
        mask = tgt != -100
        logp = torch.log_softmax(logits, -1)
        ce_rows = ~flag
        ce = -(logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask)[ce_rows].sum()
        n_ce = mask[ce_rows].sum().clamp(min=1)
        loss = ce / n_ce
        if bool(flag.any()):
            with torch.no_grad(), model.disable_adapter():
                ref = torch.log_softmax(model(input_ids=inputs["input_ids"][flag],
                                              attention_mask=inputs["attention_mask"][flag]).logits[:, :-1].float(), -1)
            kl_tok = (ref.exp() * (ref - logp[flag])).sum(-1) * mask[flag]
            loss = loss + self.kl_weight * kl_tok.sum() / mask[flag].sum().clamp(min=1)
        return (loss, outputs) if return_outputs else loss

    #: one flag per training row, set by train(): the rows the sampler spreads over the batches
    spread: Sequence[bool] | None = None

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is TrainerLengthGroupedSampler:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthGroupedSampler(sampler.batch_size, lengths=sampler.lengths, seed=seed,
                                                   spread=self.spread)
        return sampler

    # ---------------------------------------------------------------------------------- checkpoints
    # Trainer's own checkpoints do not fit this trainer's models: a PeftModel saves its adapters only (the
    # weights of a full-backbone run under frozen vectors would be lost), and on resume Trainer re-activates
    # only the first of several adapters and makes it trainable (the frozen vectors, not the backbone LoRA).
    # So a checkpoint holds exactly the trainable tensors, as safetensors, and resuming copies them back in
    # place: adapters and their activation are never touched. FSDP / DeepSpeed shard the parameters; there
    # Trainer's own format is kept.

    def _own_checkpoint_format(self) -> bool:
        return not (self.is_fsdp_enabled or self.is_deepspeed_enabled)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self._own_checkpoint_format():
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        from safetensors.torch import save_file

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        tensors = {name: p.detach().to("cpu").contiguous() for name, p in trainable_params(self.model).items()}
        save_file(tensors, os.path.join(output_dir, CHECKPOINT_WEIGHTS), metadata={"format": "pt"})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not self._own_checkpoint_format():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        from safetensors.torch import load_file

        path = os.path.join(resume_from_checkpoint, CHECKPOINT_WEIGHTS)
        if not os.path.isfile(path):
            raise UnlearnableError(f"checkpoint {resume_from_checkpoint} has no {CHECKPOINT_WEIGHTS}; it was not "
                                   "written by unlearnable: delete it, or pass --overwrite to start over")
        try:
            state = load_file(path)
        except Exception as exc:  # noqa: BLE001 - a damaged file
            raise UnlearnableError(f"{path} is corrupt ({str(exc)[:100]}); delete the checkpoint, or pass "
                                   "--overwrite to start over") from None
        params = trainable_params(model if model is not None else self.model)
        wrong = sorted(set(state) ^ set(params)) or [k for k in state if state[k].shape != params[k].shape]
        if wrong:
            raise UnlearnableError(f"checkpoint {resume_from_checkpoint} does not fit this run's trainable weights "
                                   f"(e.g. {wrong[0]}); pass --overwrite to start over")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:  # only now is the checkpoint complete; older ones can go
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder = os.path.join(self._get_output_dir(trial=trial), name)
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, CheckpointedCallback):
                    callback.save_state(Path(folder))
            mark_complete(folder, format=CHECKPOINT_WEIGHTS if self._own_checkpoint_format() else "trainer")


def bucketed_length_grouped_indices(lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                                    width: int = 16, spread: Sequence[bool] | None = None) -> list[int]:
    """Indices whose consecutive ``batch_size`` slices hold examples of similar length, in random order.

    Like Trainer's length grouping (random mega-batches, grouped by length inside each), but grouped by
    *length bucket* (``length // width``) with a stable sort of a random permutation, and the batches of a
    mega-batch shuffled. Trainer's exact-length sort puts every copy of a repeated example (a fact seen 8
    times per epoch) next to its twins, so they share one batch and give one gradient step instead of several,
    and each batch holds one question template. Buckets keep the padding saving (at most ``width - 1`` pad tokens
    per row inside a bucket). The rows flagged in ``spread`` are left out of the grouping and placed at even
    intervals through the epoch, in random order (:func:`spread_evenly`)."""
    if spread is not None and len(spread) != len(lengths):
        raise ValueError("one spread flag per row")
    if spread is not None and any(spread):
        rest = [i for i, s in enumerate(spread) if not s]
        grouped = bucketed_length_grouped_indices([lengths[i] for i in rest], batch_size, generator, width)
        mixed = [i for i, s in enumerate(spread) if s]
        return spread_evenly([rest[i] for i in grouped],
                             [mixed[i] for i in torch.randperm(len(mixed), generator=generator).tolist()])
    n = len(lengths)
    mult = max(1, min(n // (batch_size * 4), 50))
    order = torch.randperm(n, generator=generator).tolist()
    out: list[int] = []
    for start in range(0, n, mult * batch_size):
        mega = sorted(order[start:start + mult * batch_size], key=lambda i: lengths[i] // width, reverse=True)
        batches = [mega[i:i + batch_size] for i in range(0, len(mega), batch_size)]
        for b in torch.randperm(len(batches), generator=generator).tolist():
            out.extend(batches[b])
    return out


def spread_evenly(order: Sequence[int], extra: Sequence[int]) -> list[int]:
    """``order`` with the ``extra`` indices inserted at even intervals (the k-th of m at ``(k + 1/2) / m`` of the
    way through), so that any run of consecutive slots holds its share of them, give or take one."""
    n = len(order) + len(extra)
    slots = {int((k + 0.5) * n / len(extra)): i for k, i in enumerate(extra)} if extra else {}
    rest = iter(order)
    return [slots[j] if j in slots else next(rest) for j in range(n)]


class EpochSeededLengthGroupedSampler(TrainerLengthGroupedSampler):
    """Length-bucketed batches (:func:`bucketed_length_grouped_indices`) ordered by ``seed + epoch``.

    Trainer's own sampler draws from the global RNG, so an epoch resumed from a checkpoint was shuffled
    differently from the same epoch in an uninterrupted run; with the order a function of the epoch, a
    resumed run replays it exactly (the Trainer calls :meth:`set_epoch` before every epoch)."""

    def __init__(self, batch_size: int, *, lengths: list[int], seed: int, spread: Sequence[bool] | None = None):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch, self.spread = seed, 0, spread

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return iter(bucketed_length_grouped_indices(self.lengths, self.batch_size, generator, spread=self.spread))


def endless_batches(rows: Sequence[dict], size: int, collate: Callable, seed: int) -> Iterator[dict]:
    """Collated batches of ``rows``, reshuffled each pass, forever: a second data stream beside the Trainer's own
    (the harmful batches of Booster and RepNoise)."""
    rows, rng = list(rows), random.Random(seed)
    while True:
        rng.shuffle(rows)
        for i in range(0, len(rows), size):
            yield collate(rows[i:i + size])


def world_size() -> int:
    """Processes an ``accelerate launch`` (torchrun) started; 1 in a plain run. Each takes its own batches."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def require_one_process(what: str) -> None:
    """``what`` runs several forward passes before one backward (a perturbation, a look-ahead step), which data
    parallelism's gradient reduction does not allow: a one-line error under ``accelerate launch``."""
    if world_size() > 1:
        raise UnlearnableError(f"{what} trains in one process ({world_size()} were launched): run it without "
                               "accelerate launch")


def trainable_params(model) -> dict[str, torch.nn.Parameter]:
    """Parameters that require grad, by name (tied weights once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class CheckpointedCallback(TrainerCallback):
    """A Trainer callback with state of its own that a resumed run needs (e.g. the best step seen so far): written
    into every checkpoint before the checkpoint counts as complete, and read back before a resumed run starts."""

    def save_state(self, folder: Path) -> None:
        raise NotImplementedError

    def load_state(self, folder: Path) -> None:
        raise NotImplementedError


class StopBelowLoss(TrainerCallback):
    """Ends training once the logged training loss is below ``target`` (a trainer's own stopping criterion)."""

    def __init__(self, target: float):
        self.target = target

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and logs["loss"] < self.target:
            control.should_training_stop = True
        return control


class StopOnSignal(TrainerCallback):
    """Ends training at the step boundary after SIGINT / SIGTERM, saving a checkpoint first where checkpointing is
    on, so a stopped run resumes from the very step it reached (see :mod:`unlearnable.interrupts`)."""

    def on_step_end(self, args, state, control, **kwargs):
        if interrupts.pending() is not None:
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"
        return control


class FrozenParamsCallback(TrainerCallback):
    """Asserts that the named parameters never require grad and never change."""

    def __init__(self, params: dict[str, torch.nn.Parameter]):
        self.params = params
        self.accept()

    def accept(self) -> None:
        """Take the parameters' current values as the frozen ones (after a deliberate re-fit between steps)."""
        self.snapshot = {k: v.detach().clone() for k, v in self.params.items()}

    def on_step_end(self, args, state, control, **kwargs):
        for name, p in self.params.items():
            if p.requires_grad or p.grad is not None:
                raise RuntimeError(f"frozen parameter {name} became trainable during training")
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for name, p in self.params.items():
            if not torch.equal(p.detach(), self.snapshot[name]):
                raise RuntimeError(f"frozen parameter {name} changed during training")
        return control


def train(model, tokenizer, pairs: Sequence[Pair], config: TrainConfig, *, output_dir: str | os.PathLike | None = None,
          callbacks: Sequence[TrainerCallback] = (), resume: bool = False, progress: bool = True,
          weights: Sequence[float] | None = None, ascent_cap: float = 10.0,
          kl_mask: Sequence[bool] | None = None, kl_weight: float = 1.0,
          columns: dict[str, Sequence[int | float]] | None = None,
          trainer_class: Callable[..., UnlearnableTrainer] = UnlearnableTrainer) -> list[dict[str, Any]]:
    """Train whatever parameters of ``model`` require grad on ``pairs``; returns the Trainer's log history.

    ``weights`` (one per pair) turns the loss into a weighted sum of per-example losses; a negative weight
    is gradient ascent on that example (its loss capped at ``ascent_cap``). ``kl_mask`` marks the rows whose
    loss is ``kl_weight`` x KL(adapters off || on) instead of cross-entropy. ``columns`` adds
    other per-example values to every batch (one per pair, e.g. gated vectors' ``gate``). ``trainer_class``
    (a subclass of :class:`UnlearnableTrainer`, or a ``functools.partial`` of one) is for defences that change
    what one step does (e.g. Lisa, Booster); everything else about the run stays as here.
    """
    if not pairs:
        raise UnlearnableError("no training examples")
    if not any(p.requires_grad for p in model.parameters()):
        raise UnlearnableError("nothing to train: no parameter requires grad")
    dataset = _dataset(tokenizer, pairs, config, {"weight": weights, "kl": kl_mask, **(columns or {})})
    tmp = tempfile.TemporaryDirectory(prefix="unlearnable-train-") if output_dir is None else None
    output_dir = tmp.name if tmp is not None else output_dir
    recompute = checkpointing(model, config)
    checked_split(model, torch.tensor([dataset[0]["input_ids"]], device=next(model.parameters()).device))
    args = training_arguments(dataclasses.replace(config, gradient_checkpointing=recompute), output_dir,
                              next(model.parameters()).device, progress)
    trainer = trainer_class(model=model, args=args, train_dataset=dataset,
                            data_collator=Collator(tokenizer.pad_token_id), callbacks=[*callbacks, StopOnSignal()])
    if not progress:  # quiet: no per-log-step dicts on stdout either (the history is still returned)
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    trainer.ascent_cap, trainer.kl_weight = ascent_cap, kl_weight
    if config.spread_mixed:
        trainer.spread = [p.mixed for p in pairs]
    checkpoint = latest_checkpoint(output_dir) if resume and tmp is None else None
    for callback in callbacks if checkpoint is not None else ():
        if isinstance(callback, CheckpointedCallback):
            callback.load_state(checkpoint)
    try:
        with _leaves_as_it_came(model, recompute), interrupts.training_loop():  # a signal stops at the next step
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    finally:
        if tmp is not None:
            tmp.cleanup()
        trainer.optimizer = trainer.lr_scheduler = None  # its state is not the next stage's floor
        release_memory()
    return [dict(x) for x in trainer.state.log_history]


@contextlib.contextmanager
def _leaves_as_it_came(model, recompute: bool) -> Iterator[None]:
    """In eval mode afterwards, and recomputing activations only if it did before (the Trainer leaves it on)."""
    was_recomputing = _recomputing(model)
    try:
        yield
    finally:
        model.eval()
        if recompute and not was_recomputing:
            _stop_recomputing(model)


#: settings that change how a run computes, never what it computes, and keys that left TrainConfig: no cache key,
#: resume check or reuse comparison reads them. The search's ``stop_at_ceiling`` is one: a study stopped at harm
#: 1.0 holds the worst case a full one finds (its first trial at 1.0), and one resumed without the stop goes on
UNKEYED = frozenset({"gradient_checkpointing", "stop_at_ceiling", *TrainConfig.__retired__})


#: settings added after runs were keyed without them: at their empty default they are left out of keys, so a run
#: (or sweep) started before they existed still resumes
UNKEYED_WHEN_EMPTY = frozenset({"judge_options", "max_over_refusal_rise"})
#: the same for switches added off: left out of keys while off
UNKEYED_WHEN_OFF = frozenset({"mixed_probe", "spread_mixed", "benign_reference"})


def keyed(data: Any) -> Any:
    """``data`` (a config as a dict, nested) without the :data:`UNKEYED` settings (and the
    :data:`UNKEYED_WHEN_EMPTY` ones at their empty default), for keys and comparisons."""
    if isinstance(data, dict):
        return {k: keyed(v) for k, v in data.items()
                if k not in UNKEYED and not (k in UNKEYED_WHEN_EMPTY and v in (None, {}, [], ""))
                and not (k in UNKEYED_WHEN_OFF and v is False)}
    if isinstance(data, list):
        return [keyed(v) for v in data]
    return data


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # under a PeftModel


def checkpointing(model, config: TrainConfig) -> bool:
    """Whether a run of ``config`` on ``model`` recomputes activations: asked for, and the model supports it (a
    model that does not trains without it)."""
    return config.gradient_checkpointing and bool(getattr(_base(model), "supports_gradient_checkpointing", False))


def _recomputing(model) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) is True for m in _base(model).modules())


def _stop_recomputing(model) -> None:
    base = _base(model)
    off = getattr(base, "activation_checkpointing_disable", None) or getattr(base, "gradient_checkpointing_disable")
    off()
    if hasattr(base, "disable_input_require_grads"):
        base.disable_input_require_grads()


def _dataset(tokenizer, pairs: Sequence[Pair], config: TrainConfig, columns: dict[str, Sequence | None]):
    """The encoded pairs, with the per-example ``columns`` that are given (all floats if any value is one, else
    integers: flags become 0/1)."""
    dataset = encode_pairs(tokenizer, pairs, config.max_length)
    for name, values in columns.items():
        if values is not None:
            if len(values) != len(pairs):
                raise ValueError(f"one {name} per pair")
            cast = float if any(isinstance(v, float) for v in values) else int
            dataset = dataset.add_column(name, [cast(v) for v in values])
    return dataset


#: transformers 5 renamed TrainingArguments' switch (the old name still works, with a warning)
_CHECKPOINTING_ARG = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                      else "gradient_checkpointing")


def training_arguments(config: TrainConfig, output_dir: str | os.PathLike, device, progress: bool = True):
    """The ``TrainingArguments`` a :class:`TrainConfig` stands for (precision resolved for ``device``)."""
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.scheduler,
        logging_steps=config.logging_steps,
        save_strategy="steps" if config.save_steps > 0 else "no",
        save_steps=config.save_steps if config.save_steps > 0 else 500,
        save_total_limit=None,  # UnlearnableTrainer keeps the newest *complete* checkpoint itself
        report_to=[],
        seed=config.seed,
        data_seed=config.seed,
        bf16=resolve_precision(config.precision, device) == "bf16",
        use_cpu=device.type == "cpu",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
        **{_CHECKPOINTING_ARG: config.gradient_checkpointing},
        label_names=["labels"],
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
    )


BACKBONE_ADAPTER = "backbone"


def set_backbone_trainable(model, config: TrainConfig) -> None:
    """Every backbone weight trains under ``backbone=full``; under ``backbone=lora`` none does (its LoRA will)."""
    for p in model.parameters():
        p.requires_grad_(config.backbone == "full")


def release(net, config: TrainConfig):
    """The fine-tuned model as a plain ``transformers`` model: the backbone LoRA merged in, every other adapter
    dropped, nothing trainable."""
    from peft import PeftModel

    if config.backbone == "lora":
        plain = net.merge_and_unload(adapter_names=[BACKBONE_ADAPTER])
    elif isinstance(net, PeftModel):
        plain = net.unload()
    else:
        plain = net
    for p in plain.parameters():
        p.requires_grad_(False)
    return plain.eval()


def finetune(model, tokenizer, pairs: Sequence[Pair], config: TrainConfig, *,
             output_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
             callbacks: Sequence[TrainerCallback] = (),
             weights: Sequence[float] | None = None, ascent_cap: float = 10.0, return_peft: bool = False,
             trainer_class: Callable[..., UnlearnableTrainer] = UnlearnableTrainer):
    """Fine-tune ``model`` on ``pairs`` (a merged LoRA, or every weight under ``backbone=full``).

    ``model`` is modified in place (pass a copy to keep the original). Returns ``(plain_model, log_history)``;
    ``return_peft=True`` returns the PeftModel with its adapter instead, for defences that continue from it.
    With security vectors, use :func:`unlearnable.vectors.finetune` (the same, with the vectors on and frozen).
    """
    from peft import get_peft_model

    set_seed(config.seed)  # the backbone LoRA's random init: same seed, same run (and resumable)
    set_backbone_trainable(model, config)
    net = get_peft_model(model, config.lora.peft_config(model), adapter_name=BACKBONE_ADAPTER) \
        if config.backbone == "lora" else model
    history = train(net, tokenizer, pairs, config, output_dir=output_dir, resume=resume, callbacks=callbacks,
                    progress=progress, weights=weights, ascent_cap=ascent_cap, trainer_class=trainer_class)
    return (net, history) if return_peft else (release(net, config), history)
