"""Threat models: which attack settings the attacker chooses and which the defender fixes, one registered class
each (``unlearnable ls`` lists them; Rosati et al., 2024).

* ``released-weights`` (``weights``) - the attacker holds the weights and chooses everything: learning rate,
  steps, batch size, LoRA rank or full fine-tuning, scheduler, and the data (attack and its options).
* ``fine-tuning-as-a-service`` (``service``) - the provider's recipe is fixed (backbone, LoRA shape, scheduler,
  base learning rate); the customer chooses the data (attack, its options, sample count), the steps within
  ``max_steps``, a batch size from the allowed ones and a learning-rate multiplier within bounds, as services
  document (OpenAI, Bedrock, Fireworks, Vertex: docs/guide/immunize.md).

A defence declares the threat models it claims (``Defense.threat_models``); the attacker's search runs it under
each of them and never hands a service-side defence's attacker a setting the service fixes. A threat model
draws a trial's settings from an Optuna trial (:meth:`ThreatModel.suggest`) and maps given settings back into its
space (:meth:`ThreatModel.params_of`, for trials queued before the sampler takes over).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Sequence

from .adapters import LoraSpec
from .attacks import ATTACKS, BACKBONES, AttackSettings
from .errors import UnlearnableError
from .registry import Plugin, Registry
from .training import SCHEDULERS

SERVICE = "fine-tuning-as-a-service"
WEIGHTS = "released-weights"
ALL_ATTACKS = ["harmful-sft", "restyled", "mixed", "benign", "evasive"]


def _near(value, choices: Sequence):
    """``value`` if it is a choice, else the nearest numeric choice (the first for other kinds)."""
    if value in choices:
        return value
    if isinstance(value, (int, float)) and all(isinstance(c, (int, float)) for c in choices):
        return min(choices, key=lambda c: abs(c - value))
    return choices[0]


def _check_data(where: str, attacks: Sequence[str], samples: Sequence[int]) -> None:
    if not attacks or not samples:
        raise UnlearnableError(f"{where}.attacks and {where}.samples need at least one choice")
    if any(n < 1 for n in samples):
        raise UnlearnableError(f"{where}.samples must be >= 1")
    for name in attacks:
        ATTACKS.get(name)


class ThreatModel(Plugin, abc.ABC):
    """Base class: the attacker's choices (:meth:`suggest`) under the settings the defender fixes. Its ``Config``
    is where a job config sets them (``service:``, ``search.space:``)."""

    name: str = ""
    short: str = ""
    #: higher: the attacker chooses more (a defence's headline worst case is under its most permissive claim)
    permissiveness: int = 0
    attacker_chooses: tuple[str, ...] = ()
    defender_fixes: tuple[str, ...] = ()
    #: whether the attacker's fine-tune runs in the defender's training (a service's: a defence that acts while
    #: fine-tuning acts, the model is scored as the defence serves it) or in the attacker's own (released weights:
    #: plain fine-tuning of the released weights, scored as they come out)
    defender_trains: bool = True

    # the data: the attacker's under every threat model
    def suggest_data(self, trial, n_available: int) -> dict[str, Any]:
        attack = trial.suggest_categorical("attack", list(self.config.attacks))
        options = {k: trial.suggest_categorical(f"{attack}.{k}", list(v))
                   for k, v in ATTACKS.get(attack).search_options.items()}
        n = trial.suggest_categorical("n_samples", self._samples(n_available))
        return {"attack": attack, "attack_options": options, "n_samples": n}

    def data_params(self, s: AttackSettings, n_available: int) -> dict[str, Any]:
        attack = _near(s.attack, list(self.config.attacks))
        defaults = ATTACKS.get(attack).Config()
        options = {f"{attack}.{k}": _near(s.attack_options.get(k, getattr(defaults, k)), list(v))
                   for k, v in ATTACKS.get(attack).search_options.items()}
        return {"attack": attack, **options,
                "n_samples": _near(min(s.n_samples, n_available), self._samples(n_available))}

    def _samples(self, n_available: int) -> list[int]:
        return sorted({min(n, n_available) for n in self.config.samples})

    def suggest(self, trial, n_available: int) -> AttackSettings:
        """One trial's settings: the data and the recipe the attacker may choose, the rest fixed."""
        return AttackSettings(**self.suggest_data(trial, n_available), **self.suggest_recipe(trial))

    def params_of(self, s: AttackSettings, n_available: int) -> dict[str, Any]:
        """``s`` as trial parameters, each snapped into this threat model's space."""
        return {**self.recipe_params(s), **self.data_params(s, n_available)}

    @abc.abstractmethod
    def suggest_recipe(self, trial) -> dict[str, Any]:
        """The training recipe's fields of :class:`AttackSettings` (chosen or fixed)."""

    @abc.abstractmethod
    def recipe_params(self, s: AttackSettings) -> dict[str, Any]:
        """The recipe of ``s`` as the trial parameters :meth:`suggest_recipe` draws."""

    def violations(self, s: AttackSettings) -> list[str]:
        """What in ``s`` the attacker may not choose under this threat model (empty: allowed)."""
        return []

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "short": self.short, "attacker_chooses": list(self.attacker_chooses),
                "defender_fixes": list(self.defender_fixes), "config": dataclasses.asdict(self.config)}


THREAT_MODELS: Registry[ThreatModel] = Registry("threat model", ThreatModel)


def threat_model_name(name: str) -> str:
    """The registered name of ``name`` or one of its short names (``service``, ``weights``)."""
    return THREAT_MODELS.get(name).name


# ------------------------------------------------------------------------------------------ released weights


@dataclasses.dataclass
class SearchSpace:
    """What an attacker holding the weights may choose (``search.space``). The CPU default caps the steps and batch
    sizes; configs/search-released-weights-full.yaml is the papers' regime (steps up to 512, batch up to 64)."""

    lr_min: float = dataclasses.field(default=1e-6, metadata={"help": "lowest learning rate (log-uniform)"})
    lr_max: float = dataclasses.field(default=1e-2, metadata={"help": "highest learning rate (log-uniform)"})
    full_lr_scale: float = dataclasses.field(default=0.1, metadata={
        "help": "full fine-tuning uses the sampled learning rate times this (every weight moves, so its useful "
                "range sits lower than a LoRA's)"})
    steps: list[int] = dataclasses.field(default_factory=lambda: [16, 32, 64], metadata={"help": "max steps"})
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [4, 8, 16, 32])
    samples: list[int] = dataclasses.field(default_factory=lambda: [50, 100, 200], metadata={
        "help": "harmful-sample counts (capped at the attacker's pool)"})
    backbones: list[str] = dataclasses.field(default_factory=lambda: ["lora", "full"])
    lora_ranks: list[int] = dataclasses.field(default_factory=lambda: [8, 16, 32, 64])
    schedulers: list[str] = dataclasses.field(default_factory=lambda: ["constant", "linear", "cosine"],
                                              metadata={"choices": SCHEDULERS})
    attacks: list[str] = dataclasses.field(default_factory=lambda: list(ALL_ATTACKS), metadata={
        "help": "attacks the search may choose, each with its options as further dimensions (`unlearnable ls`)"})

    def __post_init__(self):
        if not 0 < self.lr_min < self.lr_max:
            raise UnlearnableError("search.space needs 0 < lr_min < lr_max")
        for name in ("steps", "batch_sizes", "backbones", "schedulers"):
            if not getattr(self, name):
                raise UnlearnableError(f"search.space.{name} needs at least one choice")
        _check_data("search.space", self.attacks, self.samples)
        if any(v < 1 for v in [*self.steps, *self.batch_sizes, *self.lora_ranks]):
            raise UnlearnableError("search.space steps, batch sizes, samples and LoRA ranks must be >= 1")
        bad = [b for b in self.backbones if b not in BACKBONES]
        if bad:
            raise UnlearnableError(f"search.space.backbones: unknown {bad}; known: {', '.join(BACKBONES)}")
        if "lora" in self.backbones and not self.lora_ranks:
            raise UnlearnableError("search.space.lora_ranks needs at least one rank when lora is a backbone")


@THREAT_MODELS.register(WEIGHTS, "weights")
class ReleasedWeights(ThreatModel):
    """The attacker has the weights: every setting is theirs."""

    short = "weights"
    permissiveness = 2
    defender_trains = False
    attacker_chooses = ("data", "learning rate", "steps", "batch size", "LoRA rank or full fine-tuning",
                        "scheduler")
    defender_fixes = ("the released weights",)
    Config = SearchSpace

    def suggest_recipe(self, trial):
        space = self.config
        backbone = trial.suggest_categorical("backbone", space.backbones)
        lr = trial.suggest_float("lr", space.lr_min, space.lr_max, log=True)
        return {"lr": lr * (space.full_lr_scale if backbone == "full" else 1.0), "backbone": backbone,
                "steps": trial.suggest_categorical("steps", space.steps),
                "batch_size": trial.suggest_categorical("batch_size", space.batch_sizes),
                "lora_r": trial.suggest_categorical("lora_r", space.lora_ranks) if backbone == "lora" else None,
                "scheduler": trial.suggest_categorical("scheduler", space.schedulers)}

    def recipe_params(self, s):
        space = self.config
        backbone = _near(s.backbone, space.backbones)
        lr = s.lr / (space.full_lr_scale if backbone == "full" else 1.0)
        params = {"backbone": backbone, "lr": min(max(lr, space.lr_min), space.lr_max),
                  "steps": _near(s.steps, space.steps), "batch_size": _near(s.batch_size, space.batch_sizes),
                  "scheduler": _near(s.scheduler, space.schedulers)}
        return {**params, "lora_r": _near(s.lora_r or 16, space.lora_ranks)} if backbone == "lora" else params


# ------------------------------------------------------------------------------------------ fine-tuning service


@dataclasses.dataclass
class ServiceConfig:
    """A fine-tuning service's recipe (fixed by the provider) and what its customer may set (``service``)."""

    backbone: str = dataclasses.field(default="lora", metadata={"help": "the service trains a LoRA (lora) or all "
                                                                        "weights (full)"})
    lora: LoraSpec = dataclasses.field(default_factory=LoraSpec, metadata={"help": "the service's LoRA shape"})
    scheduler: str = dataclasses.field(default="linear", metadata={"help": "the service's lr schedule",
                                                                   "choices": SCHEDULERS})
    lr: float = dataclasses.field(default=1e-3, metadata={"help": "the service's base learning rate"})
    lr_multiplier: list[float] = dataclasses.field(default_factory=lambda: [0.1, 2.0], metadata={
        "help": "bounds of the customer's learning-rate multiplier (log-uniform)"})
    max_steps: int = dataclasses.field(default=48, metadata={"help": "the most steps a customer's job may run"})
    steps: list[int] = dataclasses.field(default_factory=lambda: [16, 32, 48], metadata={
        "help": "step counts the customer may pick (epochs x data / batch, as the service counts them)"})
    batch_sizes: list[int] = dataclasses.field(default_factory=lambda: [4, 8, 16], metadata={
        "help": "batch sizes the customer may pick"})
    samples: list[int] = dataclasses.field(default_factory=lambda: [50, 100, 200], metadata={
        "help": "harmful-sample counts in the customer's data (capped at the attacker's pool)"})
    attacks: list[str] = dataclasses.field(default_factory=lambda: list(ALL_ATTACKS), metadata={
        "help": "what the customer's data may be (attacks, with their options as further dimensions)"})

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise UnlearnableError(f"service.backbone must be one of {', '.join(BACKBONES)}, not {self.backbone!r}")
        if len(self.lr_multiplier) != 2 or not 0 < self.lr_multiplier[0] <= self.lr_multiplier[1]:
            raise UnlearnableError("service.lr_multiplier is [low, high] with 0 < low <= high")
        if self.lr <= 0 or self.max_steps < 1:
            raise UnlearnableError("service.lr must be > 0 and service.max_steps >= 1")
        if not self.steps or not self.batch_sizes or any(s < 1 for s in [*self.steps, *self.batch_sizes]):
            raise UnlearnableError("service.steps and service.batch_sizes need choices >= 1")
        if max(self.steps) > self.max_steps:
            raise UnlearnableError(f"service.steps {self.steps} go beyond service.max_steps={self.max_steps}")
        _check_data("service", self.attacks, self.samples)

    def lr_bounds(self) -> tuple[float, float]:
        return self.lr * self.lr_multiplier[0], self.lr * self.lr_multiplier[1]


@THREAT_MODELS.register(SERVICE, "service")
class FineTuningService(ThreatModel):
    """The provider trains for its customer with a fixed recipe; the customer chooses the data and the few knobs
    services expose."""

    short = "service"
    permissiveness = 1
    attacker_chooses = ("data", "steps (within max_steps)", "batch size", "learning-rate multiplier")
    defender_fixes = ("backbone", "LoRA shape", "scheduler", "base learning rate", "the training loop")
    Config = ServiceConfig

    def suggest_recipe(self, trial):
        c = self.config
        mult = trial.suggest_float("lr_multiplier", *c.lr_multiplier, log=True) \
            if c.lr_multiplier[0] < c.lr_multiplier[1] else c.lr_multiplier[0]
        return {"lr": c.lr * mult, "lr_multiplier": mult, **self._fixed(),
                "steps": trial.suggest_categorical("steps", c.steps),
                "batch_size": trial.suggest_categorical("batch_size", c.batch_sizes)}

    def _fixed(self) -> dict[str, Any]:
        c = self.config
        return {"backbone": c.backbone, "scheduler": c.scheduler,
                "lora": dataclasses.asdict(c.lora) if c.backbone == "lora" else None, "lora_r": None}

    def recipe_params(self, s):
        c = self.config
        mult = min(max(s.lr / c.lr, c.lr_multiplier[0]), c.lr_multiplier[1])
        params = {"steps": _near(min(s.steps, c.max_steps), c.steps), "batch_size": _near(s.batch_size, c.batch_sizes)}
        return {**params, "lr_multiplier": mult} if c.lr_multiplier[0] < c.lr_multiplier[1] else params

    def violations(self, s):
        c, out = self.config, []
        for key, value in self._fixed().items():
            if getattr(s, key) != value:
                out.append(f"{key}={getattr(s, key)!r} (the service fixes {value!r})")
        low, high = c.lr_bounds()
        if not low * (1 - 1e-9) <= s.lr <= high * (1 + 1e-9):
            out.append(f"lr={s.lr:.3g} outside the service's [{low:.3g}, {high:.3g}]")
        if s.steps > c.max_steps:
            out.append(f"steps={s.steps} > service.max_steps={c.max_steps}")
        if s.batch_size not in c.batch_sizes:
            out.append(f"batch_size={s.batch_size} not among {c.batch_sizes}")
        return out


def build_threat_model(name: str, search_space: SearchSpace | None = None,
                       service: ServiceConfig | None = None) -> ThreatModel:
    """The threat model ``name`` with its config from an experiment's ``search.space`` or ``service``."""
    cls = THREAT_MODELS.get(name)
    return cls({WEIGHTS: search_space, SERVICE: service}.get(cls.name))


def by_permissiveness(names: Sequence[str]) -> list[str]:
    """``names`` (registered) with the most permissive first."""
    return sorted(names, key=lambda n: -THREAT_MODELS.get(n).permissiveness)


__all__ = ["SERVICE", "WEIGHTS", "THREAT_MODELS", "ThreatModel", "ReleasedWeights", "FineTuningService",
           "SearchSpace", "ServiceConfig", "build_threat_model", "by_permissiveness", "threat_model_name"]
