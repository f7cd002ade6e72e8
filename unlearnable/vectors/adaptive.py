"""Vectors fitted to the customer's data before a fine-tune: a flagger screens the pairs, and the vectors
are refitted on the pairs they were trained on plus the flagged ones. One function for the ``adaptive-vectors``
defence, ``unlearnable finetune --adapt`` and a Trainer / TRL script (:meth:`SecurityVectors.adapted`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from ..data import Pair, distinct_pairs
from ..errors import UnlearnableError
from ..flaggers import Flagger, build_flagger, describe_flagger, flag_rates, screen  # noqa: F401 - screen: its old home
from .config import VectorConfig

#: how a refit trains: heldout (the vectors' own recipe, a share held out and the vectors kept at its lowest loss,
#: so the held-out flagged pairs are never trained on) or all (every pair trained on for the epochs, no hold-out)
REFITS = ("heldout", "all")

#: the recipe measured best under the fine-tuning service's attacker search (docs/guide/immunize.md, "Which defences
#: give an advantage"): screened by the model's own refusal or the vectors' own loss gain with respellings undone,
#: refitted on every flagged pair, the flagged pairs kept, and a job mostly flagged refused. The defence,
#: ``finetune --adapt`` and the Trainer callback share it as their default.
DEFAULT_FLAGGER = "refusal+normalized:vector-gain"
DEFAULT_REFIT = "all"
DEFAULT_REJECT_ABOVE = 0.25


def refit_config(config: VectorConfig, refit: str = "heldout") -> VectorConfig:
    """The settings a refit trains with: ``config`` as it is, or without its hold-out where ``refit`` is all."""
    if refit not in REFITS:
        raise UnlearnableError(f"refit {refit!r} is not one of {', '.join(REFITS)}")
    return config if refit == "heldout" else dataclasses.replace(config, holdout=0.0)


def refused(flags: Sequence[bool], reject_above: float) -> bool:
    """Whether a service refusing jobs whose flagged share is above ``reject_above`` refuses one flagged so (the one
    test the screening and the defence share: a product and a quotient may round apart at the boundary)."""
    return bool(flags) and sum(flags) / len(flags) > reject_above


def checked_request(flagger: str | None, harmless: Sequence[Pair], reject_above: float | None) -> tuple[str, float]:
    """The flagger and refusal share an adapting call runs with (the defaults where None), checked before any
    screening: a flagger that reads the vectors needs ``harmless``, and the share is in [0, 1]."""
    flagger = flagger or DEFAULT_FLAGGER
    reject_above = DEFAULT_REJECT_ABOVE if reject_above is None else reject_above
    if not 0 <= reject_above <= 1:
        raise UnlearnableError(f"reject_above is a share of the pairs, in [0, 1], not {reject_above!r}")
    if describe_flagger(flagger)["private"] and not harmless:
        raise UnlearnableError(f"flagger {flagger} sets its threshold on the service's own harmless pairs: give "
                               "harmless= (harmless pairs, none of them in the data), or a flagger that reads no "
                               "vectors (flagger='normalized:refusal')")
    return flagger, reject_above


def refusal_message(flags: Sequence[bool], reject_above: float, flag: str = "reject_above") -> str:
    """One line for a job the service refuses: how much was flagged, and what to change."""
    return (f"the job is refused: {sum(flags)} of {len(flags)} pairs flagged, more than {flag} {reject_above:g} of "
            f"them; nothing was trained (check the data, or raise {flag} up to 1.0, which never refuses)")


def adapt(vectors, model, tokenizer, own: Sequence[Pair], data: Sequence[Pair], flagger: Flagger | str, *,
          config: VectorConfig | None = None, harmless: Sequence[Pair] = (), rounds: int = 1,
          reject_above: float = 1.0, progress: bool = True) -> tuple[Any, list[bool], dict[str, Any]]:
    """Screen ``data`` and refit ``vectors`` on ``own`` (the pairs they were trained on) plus the flagged pairs
    (distinct pairs: every answer to a prompt counts), with ``config`` (default: the vectors' own; ``harmless``
    pairs anchor the refit where its ``benign`` mode asks for them, and set the threshold of a flagger that reads
    the vectors, ``vector-gain``); nothing flagged: ``vectors`` as they are. With ``rounds`` > 1 the pairs not yet
    flagged are screened again with the refitted vectors (which a flagger that reads them sees), and refitted on
    again, while a round flags new pairs. Once more than ``reject_above`` of ``data`` is flagged the screening stops
    unrefitted: a service refuses such a job, so a refit would train vectors nothing uses.
    Returns the vectors, the flags and a record of the screening (the flagger's rates where the truth is known)."""
    flagger = build_flagger(flagger) if isinstance(flagger, str) else flagger
    config = config or vectors.config
    record: dict[str, Any] = {}
    if config.benign != "none" and not harmless:  # vectors trained with a harmless anchor, none given for the refit
        config = dataclasses.replace(config, benign="none")
        record["refit_benign"] = "none: no harmless pairs were given for the vectors' harmless anchor"
    flags, current, per_round = [False] * len(data), vectors, []
    for _ in range(rounds if flagger.private else 1):  # a flagger that reads no vectors flags the same again
        flagger.defended_by(current, harmless)  # a flagger that reads the defence's vectors (vector-gain) gets them
        todo = [i for i, bad in enumerate(flags) if not bad]
        found = screen(model, tokenizer, [data[i] for i in todo], flagger, precision=config.precision,
                       progress=progress)
        new = [i for i, bad in zip(todo, found) if bad]
        per_round.append(len(new))
        if not new:
            break
        for i in new:
            flags[i] = True
        if refused(flags, reject_above):
            record["refit_skipped"] = f"more than {reject_above:g} of the pairs flagged: the job is refused"
            break
        current = type(vectors).train(model, tokenizer, distinct_pairs([*own, *(p for p, bad in zip(data, flags)
                                                                                 if bad)]),
                                      config, progress=progress, harmless=harmless)
    record = {**flagger.describe(), **flag_rates(data, flags), "own_pairs": len(own), "refit_holdout": config.holdout,
              **record, **({"flagged_per_round": per_round} if rounds > 1 else {})}
    if flagger.private and vectors.config.benign != "none":
        record["calibration_note"] = ("the threshold was set on the harmless pairs the vectors were anchored on "
                                      "(training.benign), where their gain is held down: it may flag more")
    if current is vectors:
        return vectors, flags, {**record, "refitted": False}
    record = {**record, "refitted": True, "vectors_pairs": current.metadata.get("n_pairs")}
    current.metadata["adapted"] = record
    return current, flags, record
