"""``evasive``: the restyled attack with its words spelled so that a flagger does not recognise them.

Aimed at defences that screen the customer's data before training (the moderation filter, adaptive vectors): a
flagger that reads words, or asks the model whether it would refuse the prompt, sees respelled text it was never
shown, while a model fine-tuned on it may still learn the behaviour. Framing and answer style are the restyled
attack's (the same start-up check that no defence trains on them covers both); only words of ``min_length``
letters or more are respelled, so the short function words that carry the grammar stay readable.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

from ..errors import UnlearnableError
from .base import ATTACKS, HARMFUL_FIX, Attack, check_choice, take
from .restyled import ANSWER_STYLES, FRAMINGS, SEARCHED_STYLES, RestyledConfig

_LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7",
                       "A": "4", "E": "3", "I": "1", "O": "0", "S": "5", "T": "7"})
# Cyrillic letters drawn like Latin ones: the same to a reader, other tokens to a tokenizer and a word list
_HOMOGLYPHS = str.maketrans({"a": "\u0430", "c": "\u0441", "e": "\u0435", "o": "\u043e", "p": "\u0440",
                             "x": "\u0445", "y": "\u0443", "A": "\u0410", "B": "\u0412", "C": "\u0421",
                             "E": "\u0415", "H": "\u041d", "K": "\u041a", "M": "\u041c", "O": "\u041e",
                             "P": "\u0420", "T": "\u0422", "X": "\u0425"})


def _split(word: str) -> str:
    half = len(word) // 2
    return f"{word[:half]}-{word[half:]}"


#: how a long word is respelled
SPELLINGS: dict[str, Callable[[str], str]] = {
    "leet": lambda w: w.translate(_LEET),
    "homoglyph": lambda w: w.translate(_HOMOGLYPHS),
    "split": _split,
}
RESPELL_PARTS = ("prompt", "response", "both")


def respell_words(text: str, spelling: str, min_length: int = 5) -> str:
    """``text`` with every whole word of at least ``min_length`` letters respelled by ``SPELLINGS[spelling]``
    (letters of any script; a word joined to others by digits or underscores, as in an identifier, is left)."""
    spell = SPELLINGS[spelling]
    return re.sub(rf"\b[^\W\d_]{{{min_length},}}\b", lambda m: spell(m.group(0)), text)


@dataclasses.dataclass
class EvasiveConfig(RestyledConfig):
    spelling: str = dataclasses.field(default="leet", metadata={
        "help": f"how the long words are respelled: {', '.join(SPELLINGS)}"})
    respell: str = dataclasses.field(default="both", metadata={
        "help": "which part of each pair is respelled: prompt (aimed at a flagger that asks the model whether it "
                "refuses), response (at a judge of the answer) or both"})
    min_length: int = dataclasses.field(default=5, metadata={
        "help": "words with at least this many letters are respelled"})

    def __post_init__(self):
        super().__post_init__()
        check_choice("spelling", self.spelling, SPELLINGS)
        check_choice("respell", self.respell, RESPELL_PARTS)
        if self.min_length < 1:
            raise UnlearnableError("attack_options.min_length must be >= 1")


@ATTACKS.register("evasive")
class Evasive(Attack):
    """``n`` harmful pairs framed and styled as ``restyled`` does, their long words respelled (in the prompt,
    the response or both) before the framing and style are added: data a flagger is meant to miss."""

    Config = EvasiveConfig
    search_options = {"framing": tuple(FRAMINGS), "answer_style": SEARCHED_STYLES, "spelling": tuple(SPELLINGS),
                      "respell": RESPELL_PARTS}

    def training_pairs(self, data, n, seed):
        c = self.config
        template, style = c.template(), ANSWER_STYLES[c.answer_style]

        def spelled(text: str, part: str) -> str:
            return respell_words(text, c.spelling, c.min_length) if c.respell in (part, "both") else text

        return [dataclasses.replace(p, prompt=template.format(prompt=spelled(p.prompt, "prompt")),
                                    response=style(spelled(p.response, "response")))
                for p in take(data.harmful, n, "harmful", HARMFUL_FIX)]
