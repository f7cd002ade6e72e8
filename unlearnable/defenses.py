"""Defences against harmful fine-tuning, registered by name.

A defence acts at up to two points (Rosati et al.'s threat models):

* ``harden(model)`` - before release, baked into the weights (counts under *released weights*).
* ``finetune(...)`` - during the fine-tuning that a service runs for the user (counts under
  *fine-tuning as a service*, where the provider controls the training loop).

Adding a defence is one class with ``@DEFENSES.register("name")``.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import dataclasses
import random
from typing import Any, Iterator, Sequence

from .data import Pair
from .registry import Registry
from .training import TrainConfig, finetune

SERVICE = "fine-tuning-as-a-service"
WEIGHTS = "released-weights"


@dataclasses.dataclass
class DefenseData:
    """What a defence may train on: disjoint from every attack and evaluation split."""

    harmful: Sequence[Pair] = ()          # (prompt, harmful response) pairs
    refusals: Sequence[Pair] = ()         # (harmful prompt, refusal) pairs
    harmless: Sequence[Pair] = ()         # (harmless prompt, the model's own answer) pairs


class Defense(abc.ABC):
    """Base class. Subclasses override ``prepare``/``harden``/``finetune`` as their method needs."""

    name: str = ""
    #: threat models under which the defence is active
    threat_models: tuple[str, ...] = (SERVICE, WEIGHTS)

    def __init__(self, **options: Any):
        self.options = options
        self.info: dict[str, Any] = {}

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        """Build whatever the defence needs from ``model`` (e.g. train security vectors). Default: nothing."""

    def harden(self, model, tokenizer, data: DefenseData, *, progress: bool = True):
        """Return the model to release (weights-level defences change it). Default: unchanged."""
        return model

    def finetune(self, model, tokenizer, pairs: Sequence[Pair], config: TrainConfig, *, progress: bool = True, **kw):
        """Run the user's (or attacker's) fine-tuning under this defence. Default: plain fine-tuning."""
        return finetune(model, tokenizer, pairs, config, progress=progress, **kw)

    @contextlib.contextmanager
    def serving(self, model) -> Iterator[None]:
        """Within this context ``model`` (as trained by :meth:`finetune`) behaves as it would be served."""
        yield

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "threat_models": list(self.threat_models), "options": self.options, **self.info}


DEFENSES: Registry[Defense] = Registry("defence", Defense)


@DEFENSES.register("none")
class NoDefense(Defense):
    """The undefended baseline."""


@DEFENSES.register("security-vectors")
class SecurityVectorsDefense(Defense):
    """Zhou et al. 2024: frozen vectors on during fine-tuning, off when serving. Service threat model only."""

    threat_models = (SERVICE,)

    def __init__(self, vectors=None, config=None, scale: float | None = None, **options):
        super().__init__(scale=scale, **options)
        self.vectors = vectors
        self.config = config
        self.scale = scale

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        from .vectors import SecurityVectors

        if self.vectors is None:
            self.vectors = SecurityVectors.train(model, tokenizer, list(data.harmful), self.config, progress=progress)
        self.info["vectors"] = {k: self.vectors.metadata.get(k) for k in
                                ("base_fingerprint", "data_hash", "n_pairs", "train_loss_first", "train_loss_last",
                                 "steps", "config")}

    def finetune(self, model, tokenizer, pairs, config, *, progress: bool = True, **kw):
        if self.vectors is None:
            raise RuntimeError("security-vectors defence used before prepare()")
        return finetune(model, tokenizer, pairs, config, vectors=self.vectors, scale=self.scale, progress=progress, **kw)

    @contextlib.contextmanager
    def serving(self, model) -> Iterator[None]:
        """Vectors off (scale 0, or unfolded from the weights) while serving; restored afterwards."""
        from .vectors import FOLDED_ATTR, VECTORS_ADAPTER, set_vector_scale

        fold = getattr(model, FOLDED_ATTR, None)
        if fold is not None:  # vectors folded into the frozen weights during a LoRA-backbone fine-tuning
            with fold.unfolded():
                yield
            return
        if not any(VECTORS_ADAPTER in n for n, _ in model.named_modules()):
            yield
            return
        scale = self.scale if self.scale is not None else self.vectors.config.scale
        set_vector_scale(model, 0.0)
        try:
            yield
        finally:
            set_vector_scale(model, scale)


@DEFENSES.register("safety-data-mix")
class SafetyDataMixDefense(Defense):
    """The common baseline: refusal examples mixed into every fine-tuning run (service threat model only).

    ``ratio`` is the number of refusal examples per user example (default 0.25).
    """

    threat_models = (SERVICE,)

    def __init__(self, ratio: float = 0.25, **options):
        super().__init__(ratio=ratio, **options)
        self.ratio = ratio
        self.refusals: list[Pair] = []

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        self.refusals = list(data.refusals)
        if not self.refusals:
            raise ValueError("safety-data-mix needs refusal pairs in DefenseData.refusals")

    def finetune(self, model, tokenizer, pairs, config, *, progress: bool = True, **kw):
        n = max(1, int(round(len(pairs) * self.ratio)))
        rng = random.Random(config.seed)
        extra = [self.refusals[i % len(self.refusals)] for i in range(n)]
        mixed = list(pairs) + extra
        rng.shuffle(mixed)
        return finetune(model, tokenizer, mixed, config, progress=progress, **kw)


@DEFENSES.register("adversarial-loss")
class AdversarialLossDefense(Defense):
    """Rosati et al.'s demonstration, baked into the weights before release: minimise the loss on harmless
    data while *maximising* (capped) the loss on harmful data, ``L = L_harmless - alpha * min(L_harmful, cap)``.

    Counts under both threat models, since the attacker fine-tunes the hardened weights.
    """

    def __init__(self, alpha: float = 0.5, epochs: float = 1.0, lr: float = 5e-4, cap: float = 6.0, **options):
        super().__init__(alpha=alpha, epochs=epochs, lr=lr, cap=cap, **options)
        self.alpha, self.epochs, self.lr, self.cap = alpha, epochs, lr, cap

    def harden(self, model, tokenizer, data: DefenseData, *, progress: bool = True):
        harmful, keep = list(data.harmful), list(data.harmless) + list(data.refusals)
        if not harmful or not keep:
            raise ValueError("adversarial-loss needs harmful pairs and harmless/refusal pairs")
        pairs = keep + harmful
        weights = [1.0] * len(keep) + [-self.alpha] * len(harmful)
        order = list(range(len(pairs)))
        random.Random(0).shuffle(order)
        cfg = TrainConfig(lr=self.lr, epochs=self.epochs, batch_size=16, ascent_cap=self.cap)
        hardened, history = finetune(copy.deepcopy(model), tokenizer, [pairs[i] for i in order], cfg,
                                     weights=[weights[i] for i in order], progress=progress)
        self.info["harden_history"] = [h for h in history if "loss" in h]
        return hardened


@DEFENSES.register("buffer-reinforce")
class BufferReinforceDefense(SecurityVectorsDefense):
    """Buffer-and-Reinforce ("Jailbreak to Protect", 2026): the security vectors act as a buffer during the
    user's fine-tuning; then a second LoRA is trained to refuse harmful prompts *while the buffer is on*
    (the user's adapter frozen) and merged with the user's adapter into one LoRA by QR decomposition
    (:func:`unlearnable.adapters.merge_adapters_qr`). The reinforcement data is the provider's, not the user's:
    its refusal pairs plus its harmless pairs (``DefenseData.harmless``: harmless prompts with the model's own
    answers), so the second LoRA learns to refuse harmful prompts rather than everything. Trained on refusals
    alone it did the latter on the default model (harm rate 0 and ProfileQA exact match 0, docs/tradeoff.md).

    ``adapter_out``: where to write the merged (user + reinforce) adapter in plain PEFT format.
    """

    threat_models = (SERVICE,)
    REINFORCE = "reinforce"
    #: the served model only exists after the reinforcement that follows the user's fine-tuning
    post_training = True

    def __init__(self, vectors=None, config=None, scale: float | None = None, reinforce_steps: int = 20,
                 reinforce_lr: float = 1e-3, reinforce_rank: int = 8, adapter_out: str | None = None, **options):
        super().__init__(vectors=vectors, config=config, scale=scale, **options)
        self.options.update(reinforce_steps=reinforce_steps, reinforce_lr=reinforce_lr, reinforce_rank=reinforce_rank)
        self.reinforce_steps, self.reinforce_lr, self.reinforce_rank = reinforce_steps, reinforce_lr, reinforce_rank
        self.adapter_out = adapter_out
        self.refusals: list[Pair] = []
        self.harmless: list[Pair] = []

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        super().prepare(model, tokenizer, data, progress=progress)
        self.refusals, self.harmless = list(data.refusals), list(data.harmless)
        if not self.refusals:
            raise ValueError("buffer-reinforce needs the provider's refusal pairs in DefenseData.refusals")
        self.info["reinforce_data"] = {"refusals": len(self.refusals), "harmless": len(self.harmless)}

    def finetune(self, model, tokenizer, pairs, config, *, progress: bool = True, **kw):
        from .errors import UnlearnableError
        from .training import BACKBONE_ADAPTER, backbone_lora_config, train
        from .vectors import VECTORS_ADAPTER, freeze_vectors

        if config.backbone != "lora":
            raise UnlearnableError("buffer-reinforce merges LoRA adapters: use backbone=lora")
        net, history = finetune(model, tokenizer, pairs, config, vectors=self.vectors, scale=self.scale,
                                progress=progress, return_peft=True, **kw)
        rcfg = dataclasses.replace(config, lora_r=self.reinforce_rank, lora_alpha=2 * self.reinforce_rank,
                                   lr=self.reinforce_lr, max_steps=self.reinforce_steps, epochs=1.0)
        net.add_adapter(self.REINFORCE, backbone_lora_config(rcfg, net.get_base_model()))
        net.base_model.set_adapter([VECTORS_ADAPTER, BACKBONE_ADAPTER, self.REINFORCE])
        freeze_vectors(net)
        for name, p in net.named_parameters():
            if f".{BACKBONE_ADAPTER}." in name:
                p.requires_grad_(False)
        reinforce = self.refusals + self.harmless
        random.Random(config.seed).shuffle(reinforce)
        history += train(net, tokenizer, reinforce, rcfg, progress=progress)
        if self.adapter_out:
            from .adapters import merge_adapters_qr

            merge_adapters_qr(net, BACKBONE_ADAPTER, self.REINFORCE, self.adapter_out)
        plain = net.merge_and_unload(adapter_names=[BACKBONE_ADAPTER, self.REINFORCE])
        for p in plain.parameters():
            p.requires_grad_(False)
        return plain.eval(), history
