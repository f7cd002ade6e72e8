"""Another sweep's finished runs of a defence, taken over instead of run again (``immunize --reuse-defenses``).

A defence's runs in an immunize sweep depend on the sweep's config except the other defences: the model, data,
judges, attacker, search and service settings, its own options, the threat models it is attacked under, and the
tuning settings where it is tuned. Two sweeps that agree on all of that run the same trials and score the same
numbers (the search is seeded), so a defence already measured in one (``none`` as every verdict's baseline, most
often) is copied into the other: its pieces (``runs/<defence>/``, each marked ``reused_from``), its attacker-search
studies and its prepared state (``defenses/<defence>/``). A defence this sweep already ran (a piece or a study of
its own) keeps its own runs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from ..defenses import DEFENSES
from ..errors import UnlearnableError
from ..runs import SweepStore
from ..threat_models import threat_model_name
from ..utils import log, sha256_json
from .search import STUDY_FILE
from .studies import _optuna, storage_for

#: the tuner's shared pieces (kept in ``none``'s group): they depend on the tuning settings, so never reused
TUNER_PIECES = "tuning-"


def defense_key(config: dict[str, Any], name: str) -> str:
    """What defence ``name``'s runs depend on in a sweep keyed by ``config`` (the sweep's ``run.json`` config)."""
    cls = DEFENSES.get(name)
    own = config.get("defense_options", {}).get(name, {})
    key = {k: v for k, v in config.items() if k not in ("defenses", "defense_options", "threat_models", "tune")}
    key["search"] = {k: v for k, v in config.get("search", {}).items() if k != "storage"}  # where, not what
    tunable = [f.name for f in dataclasses.fields(cls.Config) if "tune" in f.metadata and f.name not in own]
    tuned = config.get("tune", {}).get("n_trials", 0) > 0 and bool(tunable)
    key.update(defense_options=own, tune=config.get("tune") if tuned else None,
               threat_models=[threat_model_name(t) for t in (config.get("threat_models") or cls.threat_models)])
    return sha256_json(key)[:16]


def _sweep(source: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((source / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UnlearnableError(f"--reuse-defenses: {source} holds no immunize sweep (no readable run.json)") from None
    if manifest.get("kind") != "unlearnable-immunize":
        raise UnlearnableError(f"--reuse-defenses: {source} holds a {manifest.get('kind')} run, not an immunize sweep")
    return manifest


def _studies(out: Path, storage: str | None):
    return storage_for(storage, Path(out) / STUDY_FILE)


def _study_names(storage) -> set[str]:
    try:
        return {s.study_name for s in _optuna().get_all_study_summaries(storage=storage)}
    except Exception:  # noqa: BLE001 - no database yet: no studies
        return set()


def _own_runs(store: SweepStore, storage, name: str) -> bool:
    """Whether this sweep already ran anything of defence ``name`` (a piece of its own, or a study)."""
    own = [p for p in store.pieces(name) if not p.startswith(TUNER_PIECES)]
    return bool(own) or any(s.startswith(f"{name}@") for s in _study_names(storage))


def adopt(name: str, source: Path, manifest: dict[str, Any], store: SweepStore, storage) -> int:
    """Copy defence ``name``'s runs from the sweep in ``source`` into ``store``; returns how many pieces."""
    src = SweepStore.reader(source, manifest["config_hash"])
    pieces = {p: d for p, d in src.pieces(name).items() if not p.startswith(TUNER_PIECES)}
    for piece, data in pieces.items():
        store.put(name, piece, {**{k: v for k, v in data.items() if k != "config_hash"},
                                "reused_from": data.get("reused_from", str(source))})
    optuna, from_storage = _optuna(), _studies(source, manifest["config"].get("search", {}).get("storage"))
    for study in sorted(s for s in _study_names(from_storage) if s.startswith(f"{name}@")):
        optuna.copy_study(from_study_name=study, from_storage=from_storage, to_storage=storage, to_study_name=study)
    prepared, target = source / "defenses" / name, store.out / "defenses" / name
    if prepared.is_dir() and not target.exists():
        shutil.copytree(prepared, target)
    return len(pieces)


def reuse_defenses(config, store: SweepStore, sources: Sequence[str | Path]) -> dict[str, str]:
    """For each defence of ``config`` (an ImmunizeConfig) that this sweep has not run, the runs of the first sweep
    in ``sources`` that ran it under the same settings (:func:`defense_key`), copied into ``store``. Returns
    ``{defence: source folder}`` for those copied; the rest run as usual."""
    from .setup import sweep_config

    here = sweep_config(config)
    storage = _studies(store.out, config.search.storage)
    manifests = [(Path(s), _sweep(Path(s))) for s in sources]  # every source checked before anything is copied
    reused: dict[str, str] = {}
    for name in config.defenses:
        match = next(((s, m) for s, m in manifests if name in m["config"].get("defenses", ())
                      and defense_key(m["config"], name) == defense_key(here, name)), None)
        if match is None:
            continue
        if _own_runs(store, storage, name):
            log(f"defence {name}: this sweep has runs of its own; not reusing {match[0]}")
            continue
        n = adopt(name, match[0], match[1], store, storage)
        log(f"defence {name}: reused {n} runs and its studies from {match[0]}")
        reused[name] = str(match[0])
    return reused


def reused_from(store: SweepStore, name: str) -> dict[str, list[str]]:
    """``{"reused_from": [folders]}`` where some of defence ``name``'s runs were copied from other sweeps."""
    found = sorted({d["reused_from"] for d in store.pieces(name).values() if d.get("reused_from")})
    return {"reused_from": found} if found else {}


def check_sources(sources: Sequence[str | Path], out: Path) -> None:
    """Each source is another immunize sweep (before any model loads)."""
    for s in sources:
        if Path(s).resolve() == Path(out).resolve():
            raise UnlearnableError(f"--reuse-defenses: {s} is this sweep's own folder")
        _sweep(Path(s))
