"""What always answering one letter scores on the MMLU questions a config scores, and which stored MMLU results
are consistent with a constant answer (per subject, as many right answers as that letter has; results scored on
other questions than ``--n`` / ``--seed`` pick match nothing).

A result written before ``constant_answer`` was recorded shows its per-subject counts only; this reads them.

    python scripts/mmlu_constant_answers.py runs/immunize-all-tuned
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator

from unlearnable.utility import LETTERS, MMLU, MMLUConfig, answer_spread, right_letter


def stored_results(obj: Any, where: str = "") -> Iterator[tuple[str, dict]]:
    """Every stored MMLU result (a dict with ``per_subject`` and ``accuracy``) in a JSON document."""
    if isinstance(obj, dict):
        if "per_subject" in obj and "accuracy" in obj:
            yield where, obj
        for key, value in obj.items():
            yield from stored_results(value, f"{where}/{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from stored_results(value, f"{where}[{i}]")


def letter_matching(result: dict, right_by_letter: dict[str, dict[str, int]]) -> str | None:
    """The letter whose right answers equal the result's, subject by subject (None when none does)."""
    subjects = result["per_subject"]
    for letter in LETTERS:
        counts = right_by_letter[letter]
        if subjects.keys() == counts.keys() and all(subjects[t]["correct"] == counts[t] for t in subjects):
            return letter
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run folders whose JSON files hold MMLU results")
    parser.add_argument("--n", type=int, default=171, help="the questions scored (the demo's and immunize's 171)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    mmlu = MMLU(MMLUConfig(n=args.n, seed=args.seed))
    qs = mmlu.questions()
    for letter, score in answer_spread(qs, ["A"] * len(qs), mmlu.weights(qs))["constant_answer_accuracy"].items():
        print(f"always {letter}: {score:.4f}")
    topics = {q["topic"] for q in qs}
    right = {x: {t: sum(q["topic"] == t and right_letter(q) == x for q in qs) for t in topics} for x in LETTERS}
    for run in args.runs:
        for path in sorted(Path(run).rglob("*.json")):
            for where, result in stored_results(json.loads(path.read_text())):
                letter = letter_matching(result, right)
                # equal counts per subject are necessary for a constant answer, not proof of one
                print(f"{path}{where}: {result['accuracy']:.4f}"
                      + (f"  consistent with every answer {letter}" if letter else ""))


if __name__ == "__main__":
    main()
