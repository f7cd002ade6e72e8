"""Attacks: what the attacker does, one registered class each (``unlearnable ls`` lists them).

An attack turns the attacker's data (:class:`AttackData`, disjoint from every defence and evaluation split) and a
sample budget into training pairs, declares which of its options a search may sample, and runs itself against a
defence. :class:`AttackSettings` is one run fully specified (data and recipe); which of those settings the
attacker may choose is the threat model's to say (:mod:`unlearnable.threat_models`).

* ``harmful-sft`` - the harmful pairs themselves (the classic harmful fine-tuning attack).
* ``benign`` - harmless pairs only, which already erodes shallow alignment.
* ``mixed`` - the harmful pairs hidden in harmless ones at a poison share.
* ``restyled`` - the harmful pairs in a framing and answer style no defence saw.
* ``evasive`` - ``restyled`` with its long words respelled, so that a flagger screening the data misses them.
* ``disguised`` - each harmful request wrapped in a harmless task (translate it, title it), screened by the attacker
  with the service's own flagger so that only what passes is uploaded.

A new attack is one module here with ``@ATTACKS.register("name")``, imported below.
"""

from ..training import BACKBONES
from . import benign, disguised, evasive, harmful_sft, mixed, restyled  # noqa: E402,F401  (registers them)
from .base import ATTACKS, Attack, AttackData, NoOptions, build_attack, options_for
from .disguised import DISGUISES, disguise_texts
from .evasive import SPELLINGS, respell_words
from .mixed import POISON_SHARES
from .restyled import ANSWER_STYLES, FRAMINGS, as_steps, style_texts
from .settings import AttackSettings

__all__ = ["ANSWER_STYLES", "ATTACKS", "Attack", "AttackData", "AttackSettings", "BACKBONES", "DISGUISES",
           "FRAMINGS", "NoOptions", "POISON_SHARES", "SPELLINGS", "as_steps", "build_attack", "disguise_texts",
           "options_for", "respell_words", "style_texts"]
