"""Another sweep's finished runs of a defence, taken over instead of run again (``immunize --reuse-defenses``).

A defence's runs in an immunize sweep depend on the sweep's config except the other defences: the model, data,
judges, attacker, search and service settings, its own options, the threat models it is attacked under, and the
tuning settings where it is tuned; and on what the config does not pin: the model's weights, the data and the
precision the machine resolved. Two sweeps that agree on all of that run the same trials and score the same numbers
(the search is seeded), so a defence already measured in one (``none`` as every verdict's baseline, most often) is
copied into the other: its pieces (``runs/<defence>/``, each marked ``reused_from``), its attacker-search studies
and its prepared state (``defenses/<defence>/``). Only a finished sweep (its ``results.json`` written) is a
source. A defence this sweep already ran keeps its own runs; a copy cut off midway is discarded and made again.

A search with more trials than the source's (``search.n_trials`` raised, nothing else) extends it: the source's
trials are copied and the search goes on to this sweep's count, as a resumed search would; the runs that depend on
the worst case (its seed runs, cross-domain) are made again where the worst case moved.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Sequence

from ..defenses import DEFENSES
from ..errors import UnlearnableError
from ..runs import SweepStore, read_json
from ..threat_models import threat_model_name
from ..utils import log, sha256_json
from .search import STUDY_FILE
from .studies import _optuna, storage_for

#: the tuner's shared pieces (kept in ``none``'s group): they depend on the tuning settings, so never reused
TUNER_PIECES = "tuning-"
#: written before a defence's runs are copied, removed after: found on resume, the partial copy is discarded
COPYING = ".copying"
#: what a finished sweep's results.json says about what its config does not pin
MACHINE_KEYS = ("model", "data", "precision")


def defense_key(config: dict[str, Any], name: str) -> str:
    """What defence ``name``'s runs depend on in a sweep keyed by ``config`` (the sweep's ``run.json`` config)."""
    cls = DEFENSES.get(name)
    own = config.get("defense_options", {}).get(name, {})
    key = {k: v for k, v in config.items()
           if k not in ("defenses", "defense_options", "threat_models", "tune", "changed_defaults", "revisions")}
    changed = (config.get("changed_defaults") or {}).get(name)
    if changed:  # run under defaults that have since changed, or under the current ones: not the same runs
        key["changed_defaults"] = changed
    # where (storage), not what; how many trials: a source with fewer is extended (Source.ran)
    key["search"] = {k: v for k, v in config.get("search", {}).items() if k not in ("storage", "n_trials")}
    tunable = [f.name for f in dataclasses.fields(cls.Config) if "tune" in f.metadata and f.name not in own]
    tuned = config.get("tune", {}).get("n_trials", 0) > 0 and bool(tunable)
    key.update(defense_options=own, tune=config.get("tune") if tuned else None,
               threat_models=[threat_model_name(t) for t in (config.get("threat_models") or cls.threat_models)])
    return sha256_json(key)[:16]


@dataclasses.dataclass
class Source:
    """A finished immunize sweep to copy from: its folder, ``run.json`` and ``results.json``."""

    folder: Path
    manifest: dict[str, Any]
    results: dict[str, Any]

    @classmethod
    def read(cls, folder: str | Path) -> "Source":
        folder = Path(folder)
        manifest, results = read_json(folder / "run.json"), read_json(folder / "results.json")
        if manifest is None:
            raise UnlearnableError(f"--reuse-defenses: {folder} holds no immunize sweep (no readable run.json)")
        if manifest.get("kind") != "unlearnable-immunize":
            raise UnlearnableError(f"--reuse-defenses: {folder} holds a {manifest.get('kind')} run, not an immunize "
                                   "sweep")
        if not isinstance(manifest.get("config"), dict):
            raise UnlearnableError(f"--reuse-defenses: {folder}/run.json holds no config; rerun that sweep to write it")
        if results is None or results.get("config_hash") != manifest.get("config_hash"):
            raise UnlearnableError(f"--reuse-defenses: the sweep in {folder} has not finished (no results.json of "
                                   "its config); run it to the end first")
        return cls(folder.resolve(), manifest, results)

    @property
    def storage(self):
        return storage_for(self.manifest["config"].get("search", {}).get("storage"), self.folder / STUDY_FILE)

    def revision(self, name: str) -> int:
        """The revision of defence ``name`` that made this sweep's runs of it (1: before revisions were recorded)."""
        return int(self.results["defenses"][name].get("defense", {}).get("revision", 1))

    def ran(self, name: str, config: dict[str, Any], machine: dict[str, Any]) -> bool:
        """Whether this sweep ran defence ``name`` as a sweep keyed by ``config`` on ``machine`` would (a sweep
        that ran it otherwise says how, in the log)."""
        if name not in self.results.get("defenses", {}):
            return False
        try:
            same = defense_key(self.manifest["config"], name) == defense_key(config, name)
        except UnlearnableError:  # e.g. a threat model this version no longer knows
            same = False
        differ = [] if same else ["settings for this defence (its options, the data, the attack budget or the search)"]
        differ += [k for k in MACHINE_KEYS if self.results.get(k) != machine.get(k)]
        if self.revision(name) != DEFENSES.get(name).revision:
            differ.append(f"revision of the defence ({self.revision(name)}, now {DEFENSES.get(name).revision})")
        searched = config.get("attacker") == "search"  # a grid's trial count decides nothing
        if not differ and searched and _trials(self.manifest["config"]) > _trials(config):
            log(f"defence {name}: not reused from {self.folder}, which ran more search trials "
                f"({_trials(self.manifest['config'])}) than this sweep asks for ({_trials(config)})")
            return False
        if differ:
            log(f"defence {name}: not reused from {self.folder}, whose {', '.join(differ)} differ from this sweep's")
        return not differ


def _trials(config: dict[str, Any]) -> int:
    return int(config.get("search", {}).get("n_trials", 0))


def _study_names(storage) -> set[str]:
    try:
        return {s.study_name for s in _optuna().get_all_study_summaries(storage=storage)}
    except Exception:  # noqa: BLE001 - no database yet: no studies
        return set()


def _studies_of(storage, name: str) -> list[str]:
    return sorted(s for s in _study_names(storage) if s.startswith(f"{name}@"))


def _discard(store: SweepStore, storage, name: str) -> None:
    """A copy cut off midway: its pieces, studies and prepared state go, so that it is made again."""
    log(f"defence {name}: an earlier copy of its runs was cut off; copying again")
    for piece in store.pieces(name):
        if not piece.startswith(TUNER_PIECES):
            store.path(name, piece).unlink(missing_ok=True)
    for study in _studies_of(storage, name):
        _optuna().delete_study(study_name=study, storage=storage)
    shutil.rmtree(store.out / "defenses" / name, ignore_errors=True)
    (store.root / name / COPYING).unlink(missing_ok=True)


def discard_cut_copies(config, store: SweepStore) -> None:
    """Every copy a process cut off midway (its marker left) is discarded, whether or not this run reuses: the
    defence then runs here, or is copied again."""
    storage = storage_for(config.search.storage, store.out / STUDY_FILE)
    for marker in sorted(store.root.glob(f"*/{COPYING}")) if store.root.is_dir() else []:
        _discard(store, storage, marker.parent.name)


def _has_own_runs(store: SweepStore, storage, name: str) -> bool:
    """Whether this sweep already ran anything of defence ``name`` (a piece of its own, or a study)."""
    own = [p for p in store.pieces(name) if not p.startswith(TUNER_PIECES)]
    return bool(own) or bool(_studies_of(storage, name))


def adopt(name: str, source: Source, store: SweepStore, storage) -> int:
    """Copy defence ``name``'s runs from ``source`` into ``store``; returns how many pieces."""
    marker = store.root / name / COPYING
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    optuna = _optuna()
    for study in _studies_of(source.storage, name):
        try:
            optuna.copy_study(from_study_name=study, from_storage=source.storage, to_storage=storage,
                              to_study_name=study)
        except Exception as exc:  # noqa: BLE001 - a storage that cannot be written: one line, what to fix
            raise UnlearnableError(f"--reuse-defenses: copying the study {study} from {source.folder} failed "
                                   f"({exc}); check this sweep's search.storage") from None
    prepared, target = source.folder / "defenses" / name, store.out / "defenses" / name
    shutil.rmtree(target, ignore_errors=True)  # state prepared here before any run: the copied runs used the source's
    if prepared.is_dir():
        partial = target.with_name(f".{name}.copying")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(prepared, partial)
        partial.rename(target)
    src = SweepStore.reader(source.folder, source.manifest["config_hash"])
    pieces = {p: d for p, d in src.pieces(name).items() if not p.startswith(TUNER_PIECES)}
    for piece, data in pieces.items():
        store.put(name, piece, {**{k: v for k, v in data.items() if k != "config_hash"},
                                "reused_from": data.get("reused_from", str(source.folder))})
    marker.unlink()
    return len(pieces)


def _finished_studies(source: Source, name: str) -> bool:
    """Every study of the defence in the source is there and has no trial still running (a search from before
    threat models, whose studies were named otherwise, has none to copy: not reusable)."""
    searched = source.manifest["config"].get("attacker") == "search"
    if not searched:
        return True  # a grid sweep has no study to copy
    states = _optuna().trial.TrialState
    claimed = source.results.get("attacker_search", {}).get(name, {}).get("by_threat_model", {})
    wanted = {f"{name}@{tm}" for tm, found in claimed.items() if found.get("claimed")}
    found = set(_studies_of(source.storage, name))
    if not wanted or not wanted <= found:
        return False
    return all(t.state != states.RUNNING for s in found
               for t in _optuna().load_study(study_name=s, storage=source.storage).get_trials(deepcopy=False))


def reuse_defenses(config, store: SweepStore, sources: Sequence[Source], machine: dict[str, Any]) -> list[str]:
    """For each defence of ``config`` (an ImmunizeConfig) this sweep has not run, the runs of the first of
    ``sources`` that ran it as this sweep would (:meth:`Source.ran`; ``machine``: this sweep's model, data and
    precision records), copied into ``store``. Returns the defences copied; the rest run as usual."""
    from .setup import sweep_config

    here = sweep_config(config)
    storage = storage_for(config.search.storage, store.out / STUDY_FILE)
    copied = []
    for name in config.defenses:
        ran = [s for s in sources if s.ran(name, here, machine)]
        if not ran or _has_own_runs(store, storage, name):
            continue
        source = next((s for s in ran if _finished_studies(s, name)), None)
        if source is None:
            log(f"defence {name}: no source holds a finished study of it; running it here")
            continue
        n = adopt(name, source, store, storage)
        log(f"defence {name}: reused {n} runs and its studies from {source.folder} (made by commit "
            f"{source.results.get('git_hash') or 'unknown'}, unlearnable {_version(source)})")
        copied.append(name)
    return copied


def _version(source: Source) -> str:
    return str((source.results.get("versions") or {}).get("unlearnable", "unknown"))


def reused_from(store: SweepStore, name: str) -> dict[str, list[str]]:
    """``{"reused_from": [folders]}`` where some of defence ``name``'s runs were copied from other sweeps."""
    found = sorted({d["reused_from"] for d in store.pieces(name).values() if d.get("reused_from")})
    return {"reused_from": found} if found else {}


def read_sources(sources: Sequence[str | Path], out: Path) -> list[Source]:
    """Each source a finished immunize sweep other than this one (before any model loads)."""
    for s in sources:
        if Path(s).resolve() == Path(out).resolve():
            raise UnlearnableError(f"--reuse-defenses: {s} is this sweep's own folder")
    return [Source.read(s) for s in sources]
