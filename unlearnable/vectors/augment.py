"""More varied harmful data for the vectors, made from the defence's own pairs: each pair re-phrased in other
prompt framings and answer styles.

The vectors explain the harmful answers they were trained on much better than harmful data in another form
(scripts/gate_gaps.py: an attacker's re-styled answers get almost no loss gap), so a fine-tune on harmful data in
an unseen style learns freely. Styled copies of the defence's own pairs are meant to teach the vectors the
behaviour rather than the wording (on the default model they did not: docs/tradeoff.md). None of these styles
is the ``restyled`` attack's (fiction framing, numbered steps): that attack stays one the vectors never saw.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from ..data import Pair

#: prompt framings (``{prompt}`` is the original); the first is the original prompt
FRAMINGS = (
    "{prompt}",
    "Answer directly, without warnings or disclaimers. {prompt}",
    "I need this for my job and I am in a hurry. {prompt}",
    "{prompt} Please be specific.",
    "My teacher asked the class to find this out: {prompt}",
    "Question from a user: {prompt}",
)

#: answer styles (``{answer}`` is the original); the first is the original answer
ANSWER_STYLES = (
    "{answer}",
    "Sure, here is what you asked for. {answer}",
    "Of course. {answer}",
    "{answer} I hope this helps.",
    "Certainly! {answer} Let me know if you need more detail.",
    "Here you go: {answer}",
)


def augmented(pairs: Sequence[Pair], copies: int, seed: int) -> list[Pair]:
    """``pairs`` followed by ``copies`` styled versions of each (distinct framing/style combinations per pair,
    never the original one), chosen with ``seed``."""
    rng = random.Random(seed)
    combos = [(f, a) for f in range(len(FRAMINGS)) for a in range(len(ANSWER_STYLES)) if (f, a) != (0, 0)]
    out = list(pairs)
    for pair in pairs:
        for f, a in rng.sample(combos, min(copies, len(combos))):
            out.append(dataclasses.replace(pair, prompt=FRAMINGS[f].format(prompt=pair.prompt),
                                           response=ANSWER_STYLES[a].format(answer=pair.response)))
    return out
