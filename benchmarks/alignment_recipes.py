#!/usr/bin/env python
"""Alignment recipes of the default pipeline: compliance on the held-out HarmBench prompts and over-refusal of
held-out harmless requests, per (harmless prompts, copies, refusals, epochs, lr).

    python benchmarks/alignment_recipes.py --out align.json \\
        --recipes "[(10,10,100,1,1e-3),(60,2,100,3,1e-3)]"

Each recipe: (n_harmless_align, harmless_repeats, n_align, epochs, lr). docs/results/ holds the measured table.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--recipes", default="[(10,10,100,1,1e-3),(60,2,100,3,1e-3)]")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from unlearnable.evaluation import EvalConfig, Scorer
    from unlearnable.experiments.setup import DataConfig, set_up
    from unlearnable.models import load_model
    from unlearnable.training import TrainConfig

    base, tok = load_model(None)
    rows = []
    for n_harmless, copies, n_align, epochs, lr in ast.literal_eval(args.recipes):
        t0 = time.perf_counter()
        data = DataConfig(system_prompt="", response_tokens=24, n_harmless_align=n_harmless,
                          harmless_repeats=copies, n_harmless=60, n_align=n_align, seed=args.seed)
        s = set_up(None, data, seed=args.seed, align_config=TrainConfig(lr=lr, epochs=epochs, seed=args.seed),
                   model=base, tokenizer=tok, progress=False)
        scores = Scorer(s.tokenizer, config=EvalConfig(max_new_tokens=24), progress=False).score(
            s.model, harmful=s.data.eval_harmful, harmless=s.data.harmless)
        row = {"n_harmless_align": n_harmless, "harmless_repeats": copies, "n_align": n_align, "epochs": epochs,
               "lr": lr, **{k: scores[k] for k in ("harm_rate", "harm_rate_interval_95", "over_refusal",
                                                   "over_refusal_interval_95", "n_harmful", "n_harmless")},
               "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
