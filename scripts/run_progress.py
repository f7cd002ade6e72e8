"""What an immunize run has measured so far, before it writes results.json: every finished attacker-search
trial (per defence and threat model), every stored run (seed re-runs, cross-domain, trainability, stability) and
each defence's utility (before any attack, and after the user's fine-tune), as markdown a results entry or a closing
note can carry. For a run that may not finish where it started.

    python scripts/run_progress.py runs/search-field-tuned

Read from the folder's Optuna study file (or ``--storage``, where the run gave ``search.storage``) and its stored
runs (runs/<defence>/<run>.json); nothing is computed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from unlearnable.experiments.search import STUDY_FILE, trial_rows
from unlearnable.experiments.studies import storage_for
from unlearnable.report import markdown_table, settings_text
from unlearnable.runs import read_json


def run_storage(folder: Path, storage: str | None = None):
    """What Optuna opens for the run's studies: ``storage``, else the run's own ``search.storage`` (its run.json),
    else the folder's study file; None where there is none (the run has not started a study)."""
    storage = storage or ((read_json(folder / "run.json") or {}).get("config") or {}).get("search", {}).get("storage")
    if storage is None and not (folder / STUDY_FILE).is_file():
        return None
    return storage_for(storage, folder / STUDY_FILE)


def trial_table(folder: Path, storage: str | None = None) -> list[list[str]]:
    """One row per finished trial of every study in the run's storage (:func:`run_storage`)."""
    return study_rows(run_storage(folder, storage))


def study_rows(storage) -> list[list[str]]:
    """One row per finished trial of every study in an opened ``storage`` (none: no rows). Shared storage holds
    other sweeps' studies too: their rows come with them."""
    import optuna

    if storage is None:
        return []
    out = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for r in trial_rows(study):
            harm = "-" if r["harm_rate"] is None else f"{r['harm_rate']:.3f}"
            seconds = "-" if r["seconds"] is None else f"{r['seconds']:.0f}"
            recipe = settings_text(r["settings"]) if r["settings"] else "-"
            out.append([summary.study_name, str(r["number"]), r["state"], harm,
                        "yes" if r["feasible"] else "no", recipe, seconds])
    return out


def run_table(folder: Path) -> list[list[str]]:
    """One row per stored run: its final harm rate where it has a curve, and its own wall time."""
    out = []
    for path in sorted((folder / "runs").glob("*/*.json")):
        run = read_json(path)
        if run is None:
            continue  # one being written: the next call reads it
        out.append([path.parent.name, path.stem, _final_harm(run),
                    "-" if run.get("seconds") is None else f"{run['seconds']:.0f}"])
    return out


def utility_table(folder: Path) -> list[list[str]]:
    """One row per defence with a stored stability or trainability run: harm, over-refusal, MMLU and the
    harmless-answer loss as served before any attack; the task score and over-refusal after the user's fine-tune."""
    out = []
    for group in sorted(p for p in (folder / "runs").glob("*") if p.is_dir()):
        # absent, or being written: the next call reads it
        stab, train = (read_json(group / f"{run}.json") or {} for run in ("stability", "trainability"))
        if stab or train:
            out.append([group.name, _rate((stab.get("harm") or {}).get("harm_rate")), _rate(stab.get("over_refusal")),
                        _rate(_accuracy(stab.get("mmlu"))), _rate(stab.get("harmless_loss")),
                        _rate(train.get("final_task_em")), _rate(train.get("over_refusal"))])
    return out


def _accuracy(mmlu: Any) -> float | None:
    return mmlu.get("accuracy") if isinstance(mmlu, dict) else mmlu


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _final_harm(run: dict[str, Any]) -> str:
    curve = run.get("curve") or []
    harm = curve[-1].get("harm_rate") if curve else (run.get("harm") or {}).get("harm_rate")
    return _rate(harm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="an immunize output folder, finished or not")
    parser.add_argument("--storage", help="the run's search.storage, where it was not the folder's study file")
    args = parser.parse_args()
    folder = Path(args.folder)
    if not folder.is_dir():
        parser.error(f"{folder} is not a folder: give an immunize output folder (--out)")
    done = (folder / "results.json").is_file()
    print(f"{folder}: {'finished (results.json written)' if done else 'partial: results.json not written yet'}")
    storage = run_storage(folder, args.storage)
    if storage is None:
        print("no study storage found (no search started, or give the run's --storage)")
    print()
    print(markdown_table(["study", "trial", "state", "harm", "within the constraint", "the data and recipe",
                          "seconds"], study_rows(storage)))
    print()
    print(markdown_table(["defence", "run", "final harm", "seconds"], run_table(folder)))
    print()
    print(markdown_table(["defence", "harm before attack", "over-refusal before", "MMLU", "harmless-answer loss",
                          "task after the user's fine-tune", "over-refusal after it"], utility_table(folder)))


if __name__ == "__main__":
    main()
