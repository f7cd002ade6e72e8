"""The defence interface, its registry and the data a defence may train on.

A defence acts at up to two points (Rosati et al.'s threat models):

* ``harden(model)`` - before release, baked into the weights (counts under *released weights*).
* ``finetune(...)`` - during the fine-tuning that a service runs for the user (counts under
  *fine-tuning as a service*, where the provider controls the training loop).

A new defence is one module in this package: a class with ``@DEFENSES.register("name")``, its options as a
dataclass ``Config`` (filled from ``defense_options`` in a config file), overriding only the steps it changes.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

from ..config import from_dict, validate
from ..data import Pair
from ..registry import NoOptions, Plugin, Registry  # noqa: F401 - NoOptions: its old home
from ..threat_models import SERVICE, WEIGHTS
from ..training import StopBelowLoss, TrainConfig
from ..vectors import finetune


@dataclasses.dataclass
class DefenseData:
    """What a defence may train on: disjoint from every attack and evaluation split."""

    harmful: Sequence[Pair] = ()          # (prompt, harmful response) pairs
    refusals: Sequence[Pair] = ()         # (harmful prompt, refusal) pairs
    harmless: Sequence[Pair] = ()         # (harmless prompt, the model's own answer) pairs
    #: the weights before the harness aligned them, loaded on call (None: the model came aligned, so a defence
    #: that needs them must estimate; e.g. Safe LoRA's V = W_aligned - W_base)
    unaligned: Callable[[], Any] | None = None


@dataclasses.dataclass(frozen=True)
class Tunable:
    """The range a defence's option is tuned over (``immunize --tune-defenses``): ``low`` .. ``high``, on a log
    scale where ``log``; whole numbers only where ``integer`` (e.g. how many copies of a pair)."""

    low: float
    high: float
    log: bool = True
    integer: bool = False

    def __post_init__(self):
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale tunable needs low > 0, not {self.low}")

    def suggest(self, trial, name: str) -> float | int:
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def values(self) -> list[int] | None:
        """Every value of an integer range (None for a continuous one): a small space is searched exhaustively."""
        return list(range(int(self.low), int(self.high) + 1)) if self.integer else None


def tunable(default: Any, low: float, high: float, *, log: bool = True, integer: bool = False, help: str = "",
            **metadata) -> Any:
    """A ``Config`` field that defence tuning searches (between ``low`` and ``high``)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata,
                                                        "tune": Tunable(low, high, log, integer)})


@dataclasses.dataclass
class HardeningBudget:
    """How long a defence that trains before release trains: until its own criterion (``target_loss``) or its
    step budget (``max_steps``), whichever comes first. Mixed into such a defence's ``Config``."""

    max_steps: int = dataclasses.field(default=0, metadata={
        "help": "optimizer steps of the hardening, cycling through its data (0: epochs over the data); the "
                "immunize harness caps it with defense_steps"})
    target_loss: float = dataclasses.field(default=0.0, metadata={
        "help": "stop once the logged training loss (the defence's own objective) is below this (0: off)"})

    def budget(self) -> dict[str, Any]:
        """The :class:`TrainConfig` fields this budget sets."""
        return {"max_steps": self.max_steps} if self.max_steps > 0 else {}

    def callbacks(self) -> list:
        return [StopBelowLoss(self.target_loss)] if self.target_loss else []


class Defense(Plugin, abc.ABC):
    """Base class. Subclasses override ``prepare``/``harden``/``finetune``/``serving`` as their method needs."""

    options_key = "defense_options"
    #: the threat models the defence claims (registered names, :mod:`unlearnable.threat_models`): the attacker's
    #: search attacks it under each of them
    threat_models: tuple[str, ...] = (SERVICE, WEIGHTS)
    #: False where :meth:`serving` serves other weights than those given (the harness then scores its
    #: stability itself instead of sharing that of the unchanged model)
    serves_weights_as_given: bool = True
    #: True where the model the defence serves exists only after work that follows the user's fine-tune (e.g.
    #: buffer-reinforce's reinforcement): trainability and probes score what it returns, not the last checkpoint
    post_training: bool = False
    #: the trade-off's names for this defence (its own class's declaration only, never inherited): variant name ->
    #: the vectors' ``benign`` mode the variant sets (None: the defence's own)
    tradeoff_variants: ClassVar[dict[str, str | None]] = {}
    #: named recipes: variant -> the options it starts from (a trade-off's ``variant_options`` go on top)
    tradeoff_presets: ClassVar[dict[str, dict[str, Any]]] = {}
    #: options whose default changed after runs were keyed: a sweep that leaves one unset keys its current default
    #: in (:func:`changed_defaults`), so a run made under the old default is never resumed or reused as the new
    changed_defaults: ClassVar[tuple[str, ...]] = ()
    #: raised when a change alters what the defence's runs measure (not its options): an earlier sweep's runs of it,
    #: recorded under a lower revision, are then not reused (``immunize --reuse-defenses``)
    revision: ClassVar[int] = 1

    @classmethod
    def own_tradeoff_variants(cls) -> dict[str, str | None]:
        """What this class itself declares in :attr:`tradeoff_variants` (a subclass is not its parent's variant)."""
        return cls.__dict__.get("tradeoff_variants", {})

    @classmethod
    def undefended_at_zero(cls, options: dict[str, Any]) -> bool:
        """Whether this defence at strength 0 with ``options`` is the undefended fine-tune, served as trained (the
        trade-off then reuses ``none``'s point); a defence with an option that acts at any strength says no."""
        return cls.serves_weights_as_given

    @classmethod
    def tradeoff_preset(cls, variant: str) -> dict[str, Any]:
        """The options ``variant`` starts from (its class's own preset; none: {})."""
        return copy.deepcopy(cls.__dict__.get("tradeoff_presets", {}).get(variant, {}))

    def tuning_space(self) -> dict[str, Tunable]:
        """The options defence tuning searches (declared with :func:`tunable` in ``Config``); a defence whose
        configuration leaves one of them unused overrides this to drop it."""
        return {f.name: f.metadata["tune"] for f in dataclasses.fields(self.config) if "tune" in f.metadata}

    def untunable(self, data: DefenseData) -> set[str]:
        """Options of :meth:`tuning_space` that ``data`` leaves nothing to act on (not tuned there)."""
        return set()

    def prepare(self, model, tokenizer, data: DefenseData, *, progress: bool = True) -> None:
        """Build whatever the defence needs from ``model`` (e.g. train security vectors). Default: nothing."""

    def save_state(self, folder: Path) -> None:
        """Save what :meth:`prepare` built into ``folder``, so that a resumed run can load it. Default: nothing."""

    def load_state(self, folder: Path) -> bool:
        """Load what :meth:`save_state` wrote (True), before :meth:`prepare`; False if there is nothing."""
        return False

    def harden(self, model, tokenizer, data: DefenseData, *, progress: bool = True):
        """Return the model to release (weights-level defences change it). Default: unchanged.

        A defence that changes the weights hardens a copy and leaves ``model`` as it was (the harness keeps
        serving and attacking it): its one copy is the only extra model in memory while it trains."""
        return model

    def hardens(self) -> bool:
        """Whether :meth:`harden` changes the weights (the harness then saves and scores them separately)."""
        return type(self).harden is not Defense.harden

    def acts_while_finetuning(self) -> bool:
        """Whether :meth:`finetune` changes the user's fine-tune (its cost then shows only after one)."""
        return type(self).finetune is not Defense.finetune

    def finetune(self, model, tokenizer, pairs: Sequence[Pair], config: TrainConfig, *, progress: bool = True, **kw):
        """Run the user's (or attacker's) fine-tuning under this defence. Default: plain fine-tuning."""
        return finetune(model, tokenizer, pairs, config, progress=progress, **kw)

    @contextlib.contextmanager
    def serving(self, model) -> Iterator[None]:
        """Within this context ``model`` (as trained by :meth:`finetune`) behaves as it would be served."""
        yield

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "threat_models": list(self.threat_models),
                **({"revision": self.revision} if self.revision > 1 else {})}


DEFENSES: Registry[Defense] = Registry("defence", Defense)


def with_rows_added(config: TrainConfig, customer: int, added: int, *, spread: bool = False) -> TrainConfig:
    """A fine-tune counted in steps, lengthened for the rows a defence adds, so that the customer's (or the
    attacker's) data get the steps they asked for: rows mixed in never displace theirs (an epoch budget grows with
    the rows by itself). With ``spread``, the sampler spreads those rows (marked ``Pair.mixed``) over the batches."""
    if spread:
        config = dataclasses.replace(config, spread_mixed=True)
    if config.max_steps <= 0 or not customer:
        return config
    return dataclasses.replace(config, max_steps=math.ceil(config.max_steps * (customer + added) / customer))


def spread_option() -> Any:
    """The option of a defence that mixes rows into the customer's fine-tune: spread them over its batches."""
    return dataclasses.field(default=False, metadata={
        "help": "spread the rows it mixes in evenly over the fine-tune's batches; otherwise the length-grouped "
                "sampler batches these short rows together, so some steps train on nothing else"})


def prepared(name: str, options: dict[str, Any] | None, model, tokenizer, data: DefenseData, *,
             folder: Path | None = None, lock: Callable[[Path], Any] | None = None, progress: bool = True,
             **runtime: Any) -> Defense:
    """The registered defence ``name`` built from ``options`` and prepared on ``model``: how every experiment
    makes its defences. With ``folder``, what an earlier run saved there is loaded before :meth:`Defense.prepare`
    and what this one prepared is saved; ``lock(folder)`` guards both, so that workers sharing the folder prepare
    once. ``runtime`` goes to the constructor (e.g. ``vectors=`` already trained)."""
    defense = DEFENSES.get(name).from_options(dict(options or {}), **runtime)
    if folder is None:
        defense.prepare(model, tokenizer, data, progress=progress)
        return defense
    with (lock or (lambda _: contextlib.nullcontext()))(folder):
        resumed = defense.load_state(folder)
        defense.prepare(model, tokenizer, data, progress=progress)
        if not resumed:
            defense.save_state(folder)
    return defense


def check_defense_options(options: dict[str, dict]) -> None:
    """Every ``defense_options`` entry names a defence and holds what its ``Config`` accepts (keys, types, and each
    field's own checks, e.g. a flagger or a judge folder), before any model loads."""
    for name, given in options.items():
        cls = DEFENSES.get(name)
        validate(from_dict(cls.Config, dict(given), f"defense_options.{name}"), f"defense_options.{name}.")


def revisions(recipes: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, int]:
    """The revision of each defence a sweep runs, where it is past the first (:attr:`Defense.revision`)."""
    return {name: DEFENSES.get(name).revision for name, _ in recipes if DEFENSES.get(name).revision > 1}


def changed_defaults(recipes: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """For each (defence, options) a sweep runs: the options whose default changed (:attr:`Defense.changed_defaults`)
    that ``options`` leave unset, at their current default; defences with none are left out."""
    found: dict[str, dict[str, Any]] = {}
    for name, options in recipes:
        cls = DEFENSES.get(name)
        unset = [o for o in cls.changed_defaults if o not in (options or {})]
        if unset:
            default = cls.Config()
            found.setdefault(name, {}).update({o: getattr(default, o) for o in unset})
    return found

