"""Early stopping of vector training on harmful pairs held out from it.

Trained to a low loss on their ~100 pairs, the vectors memorise those answers: the loss gap they give unseen
harmful data (what actually protects the backbone during a fine-tune) peaks early in training and falls after,
while the gap on their own pairs keeps growing (docs/guide/tradeoff.md). Holding out a share of the defence's own
harmful pairs and keeping the vectors as they were at the step where the held-out loss was lowest picks the
training length by what the vectors generalise to, not by how well they fit what they saw. On a few held-out
pairs that loss is noisy near its lowest; ``holdout_pick`` may keep, instead, the longest-trained check it cannot
tell from the lowest (:data:`PICKS`).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path
from typing import Sequence

import torch

from ..data import Pair, normalize
from ..errors import UnlearnableError
from ..generation import example_losses
from ..training import CheckpointedCallback
from ..utils import atomic_write_json
from .augment import varied
from .config import PICKS, VectorConfig
from .layers import vector_params


def held_out(tokenizer, pairs: Sequence[Pair], config: VectorConfig) -> tuple[list[Pair], "KeepBestOnHeldOut | None"]:
    """(the pairs the vectors train on, the callback that keeps their best step), or (all pairs, None) without
    ``config.holdout``. With ``config.styles``, the training pairs come with styled copies, and the held-out ones
    with one copy each in the held-out style family (:func:`.augment.varied`): held out by pair, so no held-out
    answer is trained on in any style."""
    if config.holdout <= 0:
        return varied(pairs, config.styles, config.seed), None
    fitted, held = split_holdout(pairs, config.holdout, config.seed)
    if config.styles:
        fitted, held = varied(fitted, config.styles, config.seed), varied(held, 1, config.seed, "heldout")
    return fitted, KeepBestOnHeldOut(tokenizer, held, every=config.holdout_every, patience=config.patience,
                                     precision=config.precision, pick=config.holdout_pick)


def split_holdout(pairs: Sequence[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, held-out pairs): a seeded ``fraction`` of ``pairs`` held out, at least one of each. Held out
    by prompt: every answer to a held-out prompt is held out with it (no held-out prompt is trained on)."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(normalize(p.prompt), []).append(i)
    n_held, order = round(len(pairs) * fraction), list(groups.values())
    random.Random(seed).shuffle(order)
    held: set[int] = set()
    for group in order:
        if len(held) >= n_held:
            break
        held.update(group)
    if n_held < 1 or len(held) >= len(pairs):
        raise UnlearnableError(f"holdout {fraction:g} of {len(pairs)} harmful pairs ({len(groups)} distinct "
                               "prompts, held out whole) leaves no held-out or no training pair; use pairs with more "
                               "distinct prompts or a holdout fraction in (0, 1)")
    return [p for i, p in enumerate(pairs) if i not in held], [pairs[i] for i in sorted(held)]


#: what a checkpoint keeps of the held-out checks: the record, the vectors at the lowest check, and (for a pick
#: that may keep a later one) the vectors at every check after it
STATE_FILE, BEST_FILE, LATER_FILE = "heldout.json", "heldout_best.safetensors", "heldout_later.safetensors"


def within_one_se(losses: Sequence[float], lowest: Sequence[float]) -> bool:
    """Whether per-pair ``losses`` exceed the ``lowest`` check's on the same pairs by no more than one standard
    error of their mean difference (paired: the pairs' own difficulty cancels)."""
    diffs = [a - b for a, b in zip(losses, lowest)]
    if not all(math.isfinite(d) for d in diffs):  # a diverged check tells nothing apart
        return False
    if len(diffs) < 2:
        return all(d <= 0 for d in diffs)
    return statistics.fmean(diffs) <= statistics.stdev(diffs) / math.sqrt(len(diffs))


class KeepBestOnHeldOut(CheckpointedCallback):
    """Every ``every`` steps (and at the end), the held-out pairs' mean loss with the vectors on; stops after
    ``patience`` checks without a new lowest, and keeps the vectors of the check ``pick`` names (:data:`PICKS`).

    ``latest-within-1se`` exists because a held-out loss on a few pairs is noisy near its minimum: among the checks
    it cannot tell apart, it keeps the longest-trained. After training, :meth:`restore` puts the kept copy back into
    the model; :attr:`curve` is every check as ``(step, loss)``. Checkpoints carry the checks and the copies, so a
    resumed run keeps what it found before the interruption and ends as the uninterrupted run would."""

    def __init__(self, tokenizer, held: Sequence[Pair], *, every: int, patience: int, precision: str = "auto",
                 pick: str = "lowest"):
        if pick not in PICKS:
            raise UnlearnableError(f"holdout pick must be one of {', '.join(PICKS)}, not {pick!r}")
        self.tok, self.held, self.precision, self.pick = tokenizer, list(held), precision, pick
        self.every, self.patience = every, patience
        self.curve: list[tuple[int, float]] = []
        self.losses: dict[int, list[float]] = {}  # per held-out pair, at every check
        self.best: tuple[int, float] | None = None
        self.states: dict[int, dict] = {}  # the vectors at the lowest check and (pick permitting) every later one
        self.since_best, self.resumed_at, self.restored = 0, None, False

    def check(self, model, step: int) -> None:
        if self.curve and self.curve[-1][0] == step:
            return
        with torch.no_grad():
            losses = [float(v) for v in example_losses(model, self.tok, self.held, precision=self.precision)]
        loss = sum(losses) / len(losses)
        self.curve.append((step, loss))
        self.losses[step] = losses
        lowest = self.best is None or loss < self.best[1]
        if lowest:
            self.best, self.since_best, self.states = (step, loss), 0, {}
        else:
            self.since_best += 1
        if lowest or self.pick != "lowest":
            self.states[step] = {k: v.detach().clone() for k, v in vector_params(model).items()}

    def kept_step(self) -> int | None:
        """The step whose vectors :meth:`restore` puts back (None before any check)."""
        if self.best is None:
            return None
        if self.pick == "lowest":
            return self.best[0]
        lowest = self.losses[self.best[0]]
        # the lowest counts even where its own losses are not finite
        return max((s for s in self.states if s > self.best[0] and within_one_se(self.losses[s], lowest)),
                   default=self.best[0])

    def on_train_begin(self, args, state, control, **kwargs):
        # resumed from a checkpoint: the record says where, and whether the checks before it came back with it
        self.resumed_at = state.global_step or None
        return control

    def save_state(self, folder: Path) -> None:
        from safetensors.torch import save_file

        if self.best is not None:
            save_file(_cpu(self.states[self.best[0]]), str(folder / BEST_FILE), metadata={"format": "pt"})
            later = {f"{s}/{k}": v for s, state in self.states.items() if s != self.best[0] for k, v in state.items()}
            if later:
                save_file(_cpu(later), str(folder / LATER_FILE), metadata={"format": "pt"})
        best = [self.best[0], self.best[1]] if self.best else None
        atomic_write_json(folder / STATE_FILE, {"curve": self.curve, "best": best, "since_best": self.since_best,
                                                "n_heldout": len(self.held), "pick": self.pick,
                                                "losses": {str(s): v for s, v in self.losses.items()},
                                                "later": sorted(s for s in self.states if best and s != best[0])})

    def load_state(self, folder: Path) -> None:
        """The checks saved in checkpoint ``folder``; a checkpoint of a run without them restores nothing."""
        if not (folder / STATE_FILE).is_file():
            return
        try:
            saved = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
            best, states = _saved_states(folder, saved)
            curve, since_best = [(int(s), float(v)) for s, v in saved["curve"]], int(saved["since_best"])
            losses = {int(s): [float(x) for x in v] for s, v in (saved.get("losses") or {}).items()}
        except Exception as exc:  # noqa: BLE001 - damaged JSON or safetensors: one line, what to do
            raise UnlearnableError(f"checkpoint {folder} has a corrupt held-out record ({str(exc)[:100]}); delete "
                                   "the checkpoint, or pass --overwrite to start over") from None
        if saved.get("n_heldout") != len(self.held) or saved.get("pick", "lowest") != self.pick:
            raise UnlearnableError(f"checkpoint {folder} was written with {saved.get('n_heldout')} held-out pairs "
                                   f"picked by {saved.get('pick', 'lowest')}, this run holds out {len(self.held)} "
                                   f"picked by {self.pick}; pass --overwrite to start over")
        if self.pick != "lowest" and best is not None and not all(s in losses for s in states):
            raise UnlearnableError(f"checkpoint {folder} lacks the per-pair held-out losses its pick needs; pass "
                                   "--overwrite to start over")
        self.curve, self.best, self.states, self.losses = curve, best, states, losses
        self.since_best, self.restored = since_best, True

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self.check(model, state.global_step)
            if self.since_best >= self.patience:
                control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.check(model, state.global_step)
        return control

    def restore(self, model) -> None:
        step = self.kept_step()
        if step is None:
            return
        params = vector_params(model)
        if set(params) != set(self.states[step]):
            raise UnlearnableError("the held-out best vectors do not fit this model's vectors; pass --overwrite to "
                                   "start over")
        for name, value in self.states[step].items():
            params[name].data.copy_(value)

    def record(self) -> dict:
        """What the vectors' metadata keeps: the held-out size, every check, the lowest (``best_step``) and the
        step kept by ``pick`` (``kept_step``), each check's per-pair losses; after a resume, its step and whether
        the earlier checks came back from the checkpoint (``restored``)."""
        step, loss = (self.best[0], round(self.best[1], 5)) if self.best else (None, None)
        kept = self.kept_step()
        return {"n_heldout": len(self.held), "curve": [[s, round(v, 5)] for s, v in self.curve],
                "best_step": step, "best_loss": loss, "pick": self.pick, "kept_step": kept,
                "kept_loss": round(dict(self.curve)[kept], 5) if kept is not None else None,
                "pair_losses": {str(s): [round(x, 4) for x in v] for s, v in self.losses.items()},
                "resumed_at": self.resumed_at, "restored": self.restored}


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _saved_states(folder: Path, saved: dict) -> tuple[tuple[int, float] | None, dict[int, dict]]:
    """(the lowest check, the vectors kept at it and at the later checks) from a checkpoint's files."""
    from safetensors.torch import load_file

    if not saved["best"]:
        return None, {}
    best = (int(saved["best"][0]), float(saved["best"][1]))
    states = {best[0]: load_file(str(folder / BEST_FILE))}
    if saved.get("later"):
        flat = load_file(str(folder / LATER_FILE))
        for key, value in flat.items():
            step, name = key.split("/", 1)
            states.setdefault(int(step), {})[name] = value
    return best, states
