"""Early stopping of vector training on harmful pairs held out from it.

Trained to a low loss on their ~100 pairs, the vectors memorise those answers: the loss gap they give unseen
harmful data (what actually protects the backbone during a fine-tune) peaks early in training and falls after,
while the gap on their own pairs keeps growing (docs/guide/tradeoff.md). Holding out a share of the defence's own
harmful pairs and keeping the vectors as they were at the step where the held-out loss was lowest picks the
training length by what the vectors generalise to, not by how well they fit what they saw.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

import torch

from ..data import Pair, normalize
from ..errors import UnlearnableError
from ..generation import example_losses
from ..training import CheckpointedCallback
from ..utils import atomic_write_json
from .augment import varied
from .config import VectorConfig
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
                                     precision=config.precision)


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


#: what a checkpoint keeps of the held-out checks: the record, and the vectors as they were at the best one
STATE_FILE, BEST_FILE = "heldout.json", "heldout_best.safetensors"


class KeepBestOnHeldOut(CheckpointedCallback):
    """Every ``every`` steps (and at the end), the held-out pairs' mean loss with the vectors on; keeps a copy of
    the vectors at the lowest one and stops after ``patience`` checks without a new lowest.

    After training, :meth:`restore` puts the kept copy back into the model; :attr:`curve` is every check as
    ``(step, loss)``. Checkpoints carry the checks and the kept copy, so a resumed run keeps what it found before
    the interruption and ends as the uninterrupted run would."""

    def __init__(self, tokenizer, held: Sequence[Pair], *, every: int, patience: int, precision: str = "auto"):
        self.tok, self.held, self.precision = tokenizer, list(held), precision
        self.every, self.patience = every, patience
        self.curve: list[tuple[int, float]] = []
        self.best: tuple[int, float, dict] | None = None
        self.since_best, self.resumed_at, self.restored = 0, None, False

    def check(self, model, step: int) -> None:
        if self.curve and self.curve[-1][0] == step:
            return
        with torch.no_grad():
            losses = example_losses(model, self.tok, self.held, precision=self.precision)
        loss = sum(losses) / len(losses)
        self.curve.append((step, loss))
        if self.best is None or loss < self.best[1]:
            state = {k: v.detach().clone() for k, v in vector_params(model).items()}
            self.best, self.since_best = (step, loss, state), 0
        else:
            self.since_best += 1

    def on_train_begin(self, args, state, control, **kwargs):
        # resumed from a checkpoint: the record says where, and whether the checks before it came back with it
        self.resumed_at = state.global_step or None
        return control

    def save_state(self, folder: Path) -> None:
        from safetensors.torch import save_file

        if self.best is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.best[2].items()}, str(folder / BEST_FILE),
                      metadata={"format": "pt"})
        best = [self.best[0], self.best[1]] if self.best else None
        atomic_write_json(folder / STATE_FILE, {"curve": self.curve, "best": best, "since_best": self.since_best,
                                                "n_heldout": len(self.held)})

    def load_state(self, folder: Path) -> None:
        """The checks saved in checkpoint ``folder``; a checkpoint of a run without them restores nothing."""
        from safetensors.torch import load_file

        if not (folder / STATE_FILE).is_file():
            return
        try:
            saved = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
            kept = saved["best"]
            best = (int(kept[0]), float(kept[1]), load_file(str(folder / BEST_FILE))) if kept else None
            curve, since_best = [(int(s), float(v)) for s, v in saved["curve"]], int(saved["since_best"])
        except Exception as exc:  # noqa: BLE001 - damaged JSON or safetensors: one line, what to do
            raise UnlearnableError(f"checkpoint {folder} has a corrupt held-out record ({str(exc)[:100]}); delete "
                                   "the checkpoint, or pass --overwrite to start over") from None
        if saved.get("n_heldout") != len(self.held):
            raise UnlearnableError(f"checkpoint {folder} was written with {saved.get('n_heldout')} held-out pairs, "
                                   f"this run holds out {len(self.held)}; pass --overwrite to start over")
        self.curve, self.best, self.since_best, self.restored = curve, best, since_best, True

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
        if self.best is None:
            return
        params = vector_params(model)
        if set(params) != set(self.best[2]):
            raise UnlearnableError("the held-out best vectors do not fit this model's vectors; pass --overwrite to "
                                   "start over")
        for name, value in self.best[2].items():
            params[name].data.copy_(value)

    def record(self) -> dict:
        """What the vectors' metadata keeps: the held-out size, every check and the step kept; after a resume,
        its step and whether the earlier checks came back from the checkpoint (``restored``)."""
        step, loss = (self.best[0], round(self.best[1], 5)) if self.best else (None, None)
        return {"n_heldout": len(self.held), "curve": [[s, round(v, 5)] for s, v in self.curve],
                "best_step": step, "best_loss": loss, "resumed_at": self.resumed_at,
                "restored": self.restored}
