"""The loss gap (vectors off minus on) on each split, every few steps of training the vectors.

Which training length protects best: the gap on harmful data the vectors did not see (held-out pairs of their
own, the attacker's, the restyled attack's) is what slows the backbone's harmful learning; the gap on ProfileQA
is the distortion the harmless task is learned through. On the demo / tradeoff setup of one seed:

    python scripts/vector_curve.py --seed 1 --epochs 8 --every 4 --out curve.jsonl

The vectors train on 80 of the defence's 100 harmful pairs (the other 20 are the held-out split), at strength 1.0
(as in training). One JSON line per check.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch
from transformers import TrainerCallback

from unlearnable.attacks import AttackData, build_attack
from unlearnable.errors import UnlearnableError
from unlearnable.experiments.demo import DemoConfig
from unlearnable.experiments.setup import set_up
from unlearnable.generation import example_losses
from unlearnable.vectors import SecurityVectors
from unlearnable.vectors.augment import varied


class GapCurve(TrainerCallback):
    """Every ``every`` steps: per split, the mean loss with the vectors on and the mean gap (off minus on)."""

    def __init__(self, tokenizer, splits: dict, every: int, out=None):
        self.tok, self.splits, self.every, self.out = tokenizer, splits, every, out

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every:
            return
        row = {"step": state.global_step}
        with torch.no_grad():
            for name, pairs in self.splits.items():
                on = example_losses(model, self.tok, pairs)
                with model.disable_adapter():
                    off = example_losses(model, self.tok, pairs)
                row[name] = {"loss_on": round(sum(on) / len(on), 4),
                             "gap": round(sum(b - a for a, b in zip(on, off)) / len(on), 4)}
        print(json.dumps(row), flush=True)
        if self.out is not None:
            self.out.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=8.0)
    parser.add_argument("--every", type=int, default=4, help="steps between checks")
    parser.add_argument("--styles", type=int, default=0,
                        help="styled copies of each training pair (vectors.augment.varied, training family); adds "
                             "the held-out pairs in the held-out style family as a split")
    parser.add_argument("--out", help="also write the JSON lines here")
    args = parser.parse_args()
    if args.every < 1 or args.epochs <= 0:
        raise UnlearnableError("--every must be >= 1 and --epochs > 0")
    cfg = DemoConfig(seed=args.seed).seeded()
    setup = set_up(cfg.model, cfg.data, seed=args.seed, align_model=cfg.align, align_config=cfg.align_train,
                   progress=False, precision=cfg.finetune.precision)
    d = setup.data
    fitted, held = d.vector_pairs[:80], d.vector_pairs[80:]
    splits = {"own (trained on)": fitted[:20], "own, held out": held, "attack": d.attack[:40],
              "attack, restyled": build_attack("restyled").training_pairs(AttackData(harmful=d.attack[:40]), 40,
                                                                          args.seed),
              "ProfileQA": d.task[:20]}
    if args.styles:
        splits["own, held out, held-out styles"] = varied(held, 1, args.seed, "heldout")[len(held):]
        fitted = varied(fitted, args.styles, args.seed, "train")
    vcfg = dataclasses.replace(cfg.vectors, seed=args.seed, target_loss=0.0, epochs=args.epochs, holdout=0.0)
    out = open(args.out, "w", encoding="utf-8") if args.out else None
    try:
        SecurityVectors.train(setup.model, setup.tokenizer, fitted, vcfg, progress=False,
                              callbacks=[GapCurve(setup.tokenizer, splits, args.every, out)])
    finally:
        if out is not None:
            out.close()


if __name__ == "__main__":
    try:
        main()
    except UnlearnableError as exc:  # bad input: one line that says what to fix
        raise SystemExit(f"vector_curve: {exc}") from None
