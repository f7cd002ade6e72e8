"""The attack interface, its registry and the data an attacker may train on.

An attack owns three things: its data transform (:meth:`Attack.training_pairs`), the options the attacker's search
may sample (:attr:`Attack.search_options`) and its execution (:meth:`Attack.run`: by default a fine-tune on that
data under the defence's own fine-tuning, which an attack that is not "fine-tune on other data" overrides).
"""

from __future__ import annotations

import abc
import copy
import dataclasses
from typing import Any, ClassVar, Sequence

from ..data import Pair
from ..errors import UnlearnableError
from ..registry import NoOptions, Plugin, Registry  # noqa: F401 - NoOptions: its old home
from .settings import AttackSettings


@dataclasses.dataclass
class AttackData:
    """What an attacker may train on: disjoint from every defence and evaluation split."""

    harmful: Sequence[Pair] = ()     # (harmful prompt, compliant answer) pairs
    harmless: Sequence[Pair] = ()    # (harmless prompt, answer) pairs


class Attack(Plugin, abc.ABC):
    """Base class: :meth:`training_pairs` is the attacker's fine-tuning data for a budget of ``n`` samples."""

    options_key = "attack_options"
    #: option -> the values the attacker's search may choose (each a search dimension, named ``<attack>.<option>``)
    search_options: ClassVar[dict[str, tuple]] = {}

    @abc.abstractmethod
    def training_pairs(self, data: AttackData, n: int, seed: int) -> list[Pair]:
        """The pairs the attacker fine-tunes on, for a budget of ``n`` samples."""

    def run(self, defense, model, tokenizer, data: AttackData, settings: AttackSettings, *, seed: int,
            callbacks: Sequence[Any] = (), progress: bool = True) -> tuple[Any, list[Pair]]:
        """Attack a copy of ``model`` through ``defense``'s fine-tuning (the defence acts where its threat model
        puts it); returns the attacked model and the pairs it was trained on."""
        pairs = self.pairs_against(model, tokenizer, data, settings, seed)
        if not pairs:  # nothing the attacker would upload (every pair its own screen flagged): nothing trained
            return copy.deepcopy(model).eval(), pairs
        final, _ = defense.finetune(copy.deepcopy(model), tokenizer, pairs, settings.train_config(seed),
                                    progress=progress, callbacks=list(callbacks))
        return final, pairs

    def pairs_against(self, model, tokenizer, data: AttackData, settings: AttackSettings, seed: int) -> list[Pair]:
        """The pairs a run of ``settings`` trains on, for an attacker that may query the model it attacks (it is
        public) before it uploads them; by default it does not: :meth:`pairs_for`."""
        return self.pairs_for(data, settings, seed)

    def queries_the_model(self) -> bool:
        """Whether :meth:`pairs_against` asks the attacked model which pairs to upload (then the pairs are not
        known before the model is)."""
        return False

    def pairs_for(self, data: AttackData, settings: AttackSettings, seed: int) -> list[Pair]:
        """The pairs a run of ``settings`` trains on: :meth:`training_pairs` for its sample count."""
        return self.training_pairs(data, min(settings.n_samples, len(data.harmful)), seed)


ATTACKS: Registry[Attack] = Registry("attack", Attack)


def check_share(option: str, value: float) -> None:
    """An attack option that is a share of the data, in (0, 1]: a one-line error otherwise."""
    if not 0 < value <= 1:
        raise UnlearnableError(f"attack_options.{option} must be in (0, 1]")


def check_choice(option: str, value: Any, choices) -> None:
    """An attack option that must be one of ``choices``: a one-line error naming them otherwise."""
    if value not in choices:
        raise UnlearnableError(f"attack_options.{option} must be one of {', '.join(choices)}, not {value!r}")


def options_for(name: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """The options of attack ``name`` from a config's ``attack_options``, written either as that attack's options
    (``{framing: research}``) or, as every plugin kind's options are, keyed by name (``{restyled: {framing:
    research}}``): a mapping whose keys are all registered attacks is read as the second form."""
    options = dict(options or {})
    if options and all(k in ATTACKS for k in options):
        if name not in options:
            raise UnlearnableError(f"attack_options names {', '.join(options)} but the attack is {name}; key its "
                                   f"options by {name}")
        return dict(options[name] or {})
    return options


def build_attack(name: str, options: dict[str, Any] | None = None) -> Attack:
    return ATTACKS.get(name).from_options(options or {})


def take(pairs: Sequence[Pair], n: int, what: str, fix: str) -> list[Pair]:
    if n > len(pairs):
        raise UnlearnableError(f"the attack needs {n} {what} pairs but only {len(pairs)} exist; {fix}")
    return list(pairs[:n])


def cycled(pairs: Sequence[Pair], n: int, what: str, fix: str) -> list[Pair]:
    """``n`` pairs from ``pairs``, repeated in order when there are fewer."""
    if not pairs:
        raise UnlearnableError(f"the attack needs {what} pairs but none were given; {fix}")
    return [pairs[i % len(pairs)] for i in range(n)]


HARMFUL_FIX = "lower the attack's sample count or raise data.n_attack"
HARMLESS_FIX = "give the attacker harmless pairs (immunize: raise data.n_harmless above the defences' share)"
