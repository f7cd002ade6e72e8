"""The user's ProfileQA fine-tune through one defence at given options: what defence tuning's trainability probe
measures, for one setting at a time (e.g. Lisa with its proximal term off, to see where its cost comes from).

    python scripts/trainability_probe.py --defense lisa --options '{"rho": 0.0}' --out runs/lisa-rho0.json

The model, data, alignment and the probe's task (8 people the evaluation never asks about) are the default
``unlearnable immunize``'s, as its defence tuning builds them; the defence prepares on the tuning split of its data.
"""

from __future__ import annotations

import argparse
import json

from unlearnable.config import build_config
from unlearnable.defenses import DEFENSES
from unlearnable.errors import UnlearnableError
from unlearnable.evaluation import Scorer
from unlearnable.experiments.immunize import ImmunizeConfig, defense_data, defense_options
from unlearnable.experiments.setup import set_up
from unlearnable.experiments.trainability import own_task, user_finetune
from unlearnable.experiments.tuning import tuning_split
from unlearnable.judges import build_judge
from unlearnable.utility import benchmarks_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defense", required=True)
    parser.add_argument("--options", default="{}", help="the defence's options over its configured ones, JSON")
    parser.add_argument("--config", help="an immunize config file (its tune, trainability, defence settings)")
    parser.add_argument("--out", help="write the result here (JSON)")
    args = parser.parse_args()
    cfg = build_config(ImmunizeConfig, file=args.config).seeded()
    options = {**defense_options(cfg, args.defense), **json.loads(args.options)}
    defense = DEFENSES.get(args.defense).from_options(options)  # a bad name or option fails before the model loads
    setup = set_up(cfg.model, cfg.data, seed=cfg.seed, align_model=cfg.align, align_config=cfg.align_train,
                   progress=False)
    split = tuning_split(defense_data(cfg, setup), cfg.tune, cfg.seed)  # what defence tuning trains it on
    defense.prepare(setup.model, setup.tokenizer, split.defense, progress=False)
    hardened = (defense.harden(setup.model, setup.tokenizer, split.defense, progress=False)
                if defense.hardens() else setup.model)
    held_out = [b.held_out(cfg.tune.n_benchmark, seed=cfg.seed + 1) for b in benchmarks_of(cfg)]
    scorer = Scorer(setup.tokenizer, [build_judge(s, cfg.judge_options) for s in cfg.judges], cfg.eval, progress=False,
                    benchmarks=[b for b in held_out if b is not None])
    task = own_task(cfg.tune.n_task_profiles, cfg.seed + 1, setup.data.task)
    done = user_finetune(defense, hardened, setup.tokenizer, scorer, task, cfg.trainability, cfg.seed,
                         progress=False)
    record = {"defense": defense.describe(), "task_em": done["final_task_em"], "curve": done["curve"],
              "n_task": done["n_task"], "mmlu": done.get("mmlu", {}).get("accuracy"), "seconds": done["seconds"]}
    print(json.dumps({k: record[k] for k in ("task_em", "curve", "mmlu", "seconds")}))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except UnlearnableError as exc:
        raise SystemExit(f"trainability_probe: {exc}") from None
