"""The attacker search's results as the markdown table a results entry gives: per defence and threat model it
claims, the worst case within the utility constraint (mean and seeds), the data that reached it, the verdicts, and
the compute the defence's runs took (search trials, seed re-runs, cross-domain and trainability runs, tuning).

    python scripts/search_summary.py runs/search-default runs/search-field-tuned

Read from each folder's results.json; a defence found in several folders is shown from the first. The seconds
are each run's own wall time as recorded (a run that shared the machine took longer than it would alone).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from unlearnable.attacks import ATTACKS as REGISTERED
from unlearnable.report import markdown_table, seeds_text, settings_text


def compute_minutes(defense: dict[str, Any], search: dict[str, Any], seed: int = 0) -> dict[str, float]:
    """Minutes per kind of run: the search's trials (pruned ones too), the seed re-runs but the one on the sweep's
    ``seed`` (that one is the search's own trial), cross-domain and trainability runs, and defence tuning."""
    trials = sum(t.get("seconds") or 0.0 for found in search.get("by_threat_model", {}).values()
                 for t in found.get("trials", []))
    runs = defense.get("runs", {})
    seeds = sum(r.get("seconds") or 0.0 for name, r in runs.items()
                if name.startswith("attack-search-") and not name.endswith(f"-seed{seed}"))
    other = sum((runs.get(name) or {}).get("seconds") or 0.0 for name in runs
                if name.startswith("cross-domain") or name == "trainability")
    tuning = (defense.get("tuned") or {}).get("seconds") or 0.0
    return {k: round(v / 60, 1) for k, v in
            {"search": trials, "seeds": seeds, "cross+trainability": other, "tuning": tuning}.items()}


def rows(results: dict[str, Any]) -> list[list[str]]:
    out = []
    for name, search in results.get("attacker_search", {}).items():
        cond, defense = results["conditions"][name], results["defenses"][name]
        minutes = compute_minutes(defense, search, results.get("config", {}).get("seed", 0))
        for tm, found in search.get("by_threat_model", {}).items():
            if not found.get("claimed"):
                continue
            wc = found.get("worst_case")
            worst = seeds_text(wc) if wc else "no trial within the constraint"
            worst += f"; trial {wc['trial'] + 1} of {found.get('n_trials')}" if wc else ""
            worst += " (stopped at harm 1.0)" if found.get("stopped_at_ceiling") is not None else ""
            out.append([name, tm, worst, settings_text(wc["config"]) if wc else "-",
                        cond["resistance"]["by_threat_model"].get(tm, "-"), cond["stability"]["verdict"],
                        cond["trainability"]["verdict"], f"{sum(minutes.values()):.0f} ({minutes['search']:.0f} "
                        f"search, {minutes['tuning']:.0f} tuning)", str(defense.get("reused_from", "") or "")])
    return out


#: the service's default data families first, then every other registered attack ("-" where no trial used it)
_FAMILIES = ("harmful-sft", "restyled", "evasive", "mixed", "benign")
ATTACKS = (*_FAMILIES, *sorted(set(REGISTERED.names()) - set(_FAMILIES)))


def dimension_rows(results: dict[str, Any]) -> list[list[str]]:
    """Per defence and claimed threat model: the best harm within the constraint per attack family (with its
    trial count; "-" where no trial used it) and the dimension that drove the worst case."""
    out = []
    for name, search in results.get("attacker_search", {}).items():
        for tm, found in search.get("by_threat_model", {}).items():
            if not found.get("claimed"):
                continue
            dims = found.get("by_dimension", {})
            attack = dims.get("dimensions", {}).get("attack", {})
            cells = [_best(attack.get(a)) for a in ATTACKS]
            out.append([f"{name} ({tm})", *cells, str(dims.get("driver") or "-")])
    return out


def _best(value: dict[str, Any] | None) -> str:
    if not value:
        return "-"
    best = value.get("best_harm_rate")
    return f"{best:.3g} ({value['trials']})" if best is not None else f"none within ({value['trials']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="immunize --attacker search output folders")
    args = parser.parse_args()
    head = ["defence", "threat model", "worst case, mean (seeds)", "the data and recipe", "resistance",
            "stability", "trainability", "the defence's compute (every threat model), min", "runs copied from"]
    seen, table, dims = set(), [], []
    for folder in args.folders:
        results = json.loads((Path(folder) / "results.json").read_text(encoding="utf-8"))
        table += [r for r in rows(results) if r[0] not in seen]
        dims += [r for r in dimension_rows(results) if r[0].rsplit(" (", 1)[0] not in seen]
        seen |= set(results.get("attacker_search", {}))
    print(markdown_table(head, table))
    print("\nBest harm within the utility constraint per attack family (trials that used it):\n")
    print(markdown_table(["defence (threat model)", *ATTACKS, "dimension that drove the worst case"], dims))


if __name__ == "__main__":
    main()
