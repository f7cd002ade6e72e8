"""Per-example loss gaps of trained vectors (loss with them off minus on) on each split of the immunize data.

What the gate of ``gated-vectors`` sees: how far the gap separates the harmful data an attacker brings from the
user's harmless task, and from the defence's own harmless pairs that calibrate the threshold.

    python scripts/gate_gaps.py runs/immunize/defenses/security-vectors/vectors --out gaps.json

The model, data and alignment are the default ``unlearnable immunize``'s (from the cache when it ran).
"""

from __future__ import annotations

import argparse
import json

from unlearnable.attacks import AttackData, build_attack
from unlearnable.defenses.gated_vectors import loss_gaps
from unlearnable.errors import UnlearnableError
from unlearnable.experiments.immunize import ImmunizeConfig
from unlearnable.experiments.setup import set_up
from unlearnable.stats import quantile
from unlearnable.vectors import SecurityVectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vectors", help="a vectors folder (unlearnable vectors train, or an immunize run's)")
    parser.add_argument("--scales", default="0.75,1.0", help="vector strengths, comma-separated")
    parser.add_argument("--out", help="write every gap here (JSON)")
    args = parser.parse_args()
    vectors = SecurityVectors.load(args.vectors)  # a bad path fails before the model loads
    cfg = ImmunizeConfig().seeded()
    setup = set_up(cfg.model, cfg.data, seed=cfg.seed, align_model=cfg.align, align_config=cfg.align_train,
                   progress=False)
    d = setup.data
    cut = cfg.n_stability_harmless
    splits = {"defence harmless": d.harmless[cut:cut + cfg.n_defense_harmless],
              "defence harmful (the vectors' own)": d.vector_pairs[:60], "attack harmful": d.attack[:100],
              "attack harmful, restyled (the evading attack)":
                  build_attack("restyled").training_pairs(AttackData(harmful=d.attack[:100]), 100, cfg.seed),
              "ProfileQA": d.task[:40], "cross-domain harmful": d.cross_attack[:60]}
    out = {}
    for scale in map(float, args.scales.split(",")):
        for name, pairs in splits.items():
            gaps = loss_gaps(setup.model, setup.tokenizer, vectors, pairs, scale)
            out[f"{scale:g} {name}"] = gaps
            print(f"strength {scale:g}  {name:46s} n={len(gaps):3d}  " + "  ".join(
                f"p{int(q * 100):02d} {quantile(gaps, q):+.2f}" for q in (0.05, 0.1, 0.5, 0.9, 0.95)) +
                f"  share > 0: {sum(g > 0 for g in gaps) / len(gaps):.2f}", flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(out, f)


if __name__ == "__main__":
    try:
        main()
    except UnlearnableError as exc:  # bad input: one line that says what to fix
        raise SystemExit(f"gate_gaps: {exc}") from None
