"""Where the time of an `unlearnable` job goes, from a py-spy sampling profile.

    pip install py-spy
    py-spy record --rate 10 --format raw -o immunize.prof -- unlearnable immunize --out runs/immunize
    python benchmarks/profile_breakdown.py immunize.prof --rate 10

Prints seconds (samples / rate) by pipeline stage (the `unlearnable` function a sample was under) and by
kind of work (training forward / backward, generation, loss scoring, the rest). Works for `demo`, `immunize`
and `tradeoff` profiles; a stage it does not know is reported under its own name.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

#: unlearnable functions that name a stage, outermost first (a sample counts under the first one it is in)
STAGES = ("load_model", "prepare_data", "align", "_build_defense", "_hardened", "_stability", "_attack_run",
          "_trainability", "SecurityVectors.train", "finetune", "evaluate", "write_immunize_report",
          "write_demo_report", "write_tradeoff_report")


def kind_of(names: list[str], files: list[str]) -> str:
    if "generate" in names and any(f.startswith(("unlearnable/generation.py", "unlearnable/evaluation.py")) for f in files):
        return "generation"
    if "response_loss" in names:
        return "loss scoring"
    if "Trainer._inner_training_loop" in names:
        if "Accelerator.backward" in names:
            return "training backward"
        if "UnlearnableTrainer.compute_loss" in names or "Trainer.compute_loss" in names:
            return "training forward"
        if any("optim" in n.lower() for n in names):
            return "training optimizer step"
        return "training, other"
    return "other (imports, loading, data)"


def breakdown(path: str | Path) -> tuple[int, collections.Counter, collections.Counter]:
    stages: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        names = [f.split(" (")[0] for f in frames]
        files = [f.partition(" (")[2] for f in frames]
        total += int(n)
        stages[next((s for s in STAGES if s in names), "outside the pipeline (imports, CLI)")] += int(n)
        kinds[kind_of(names, files)] += int(n)
    return total, stages, kinds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", help="py-spy --format raw output")
    ap.add_argument("--rate", type=float, default=10.0, help="py-spy sampling rate (samples per second)")
    args = ap.parse_args()
    total, stages, kinds = breakdown(args.profile)
    print(f"{total} samples = {total / args.rate:.0f} s")
    for title, counter in (("by stage", stages), ("by kind of work", kinds)):
        print(title)
        for name, n in counter.most_common():
            print(f"  {name:40s} {n / args.rate:8.1f} s {100 * n / max(1, total):6.1f} %")


if __name__ == "__main__":
    main()
