"""Output folders: the one protocol every command writes through.

Every artifact is written to a temporary sibling and renamed into place (:func:`unlearnable.utils.atomic_dir`),
so it exists whole or not at all. Above that, two kinds of output folder:

**One artifact** (``finetune``, ``vectors train``, ``evaluate --out``): OUT records a *run key* in its metadata
file: a hash of everything that decides the result (model fingerprint, data hash, config, seed; not the
checkpoint interval). Run again:

* OUT holds the same key: the work is done; nothing is recomputed.
* OUT holds anything else: refused unless ``--overwrite``.
* Training with ``--checkpoint-every N`` checkpoints into ``OUT.partial/`` (its ``unlearnable_run.json``
  holds the key). The same command resumes from the newest complete checkpoint there; success removes it.

A checkpoint counts as complete only once :data:`CHECKPOINT_DONE` is written into it (atomically, after
every other file), so a run killed while saving resumes from the checkpoint before.

**A sweep** (``immunize``, ``tradeoff``): a :class:`SweepStore` claims OUT for one config (``run.json``) and keeps
one JSON file per finished piece under ``OUT/runs/``; the same command resumes, skipping finished pieces.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import UnlearnableError
from .utils import atomic_write_json, cache_dir, log, sha256_json, sha256_text

PARTIAL_SUFFIX = ".partial"
RUN_FILE = "unlearnable_run.json"
CHECKPOINT_DONE = "unlearnable_checkpoint.json"
CHECKPOINT_PREFIX = "checkpoint-"


@contextlib.contextmanager
def locked(path: str | os.PathLike, *, wait: bool = False, what: str = "output folder") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (an output folder with its ``.partial``, a sweep folder, a cache entry)
    for the block, with ``filelock`` (an OS lock: a process killed with ``kill -9`` releases it).

    ``wait=False`` refuses at once, naming the holder, when another process holds it; ``wait=True`` waits (for
    caches: the second process then finds the first one's result). The lock files live under
    ``$UNLEARNABLE_CACHE/locks``, so nothing is left beside the outputs."""
    from filelock import FileLock, Timeout

    target = Path(path).resolve()
    base = cache_dir() / "locks" / sha256_text(str(target))[:24]
    base.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{base}.lock", timeout=-1 if wait else 0, is_singleton=False)
    try:
        lock.acquire()
    except Timeout:
        holder = read_json(Path(f"{base}.json")) or {}
        who = f" (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}: " \
              f"{holder.get('command')})" if holder else ""
        raise UnlearnableError(f"{what} {target} is in use by another unlearnable run{who}; wait for it to finish "
                               "or choose another --out") from None
    try:
        atomic_write_json(Path(f"{base}.json"), {"path": str(target), "pid": os.getpid(), "host": socket.gethostname(),
                                                 "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                 "command": " ".join(sys.argv)[:300]})
        yield
    finally:
        lock.release()


def run_key(**parts: Any) -> str:
    """A short hash of what decides a run's result."""
    return sha256_json(parts)[:16]


def partial_dir(out: str | os.PathLike) -> Path:
    """Where the checkpoints of the run that writes ``out`` live: the sibling ``OUT.partial``."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path`` (None where it is missing, unreadable or not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def recorded_key(out: str | os.PathLike, meta_file: str) -> str | None:
    """The run key recorded in ``out/meta_file`` (None if there is none)."""
    data = read_json(Path(out) / meta_file)
    return data.get("run_key") if data else None


def _has_files(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def check_out(out: str | os.PathLike | None, overwrite: bool, meta_file: str | None = None) -> None:
    """Refuse at once (before any slow loading) an ``out`` that holds files but no run of this kind.

    Whether a run of this kind is *the same* run is decided later by :func:`start_run`, once the run key
    is known."""
    if not out or overwrite:
        return
    out = Path(out)
    if not _has_files(out):
        return
    if meta_file and out.is_dir() and recorded_key(out, meta_file):
        return
    raise UnlearnableError(f"output folder {out} already holds files; pass --overwrite to replace them or choose "
                           "another --out")


def claim_sweep_folder(out: Path, *, kind: str, config: dict[str, Any], overwrite: bool) -> str:
    """Claim ``out`` for a resumable sweep (immunize, tradeoff) whose finished pieces are saved inside it.

    A folder holding the same sweep (same config hash in ``run.json``) is resumed; one holding a different
    sweep or other files is refused unless ``overwrite``, which empties it first. Returns the config hash."""
    config_hash = sha256_json(config)[:16]
    manifest = out / "run.json"
    if manifest.is_file() and not overwrite:
        try:
            old = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("kind") != kind or old.get("config_hash") != config_hash:
            what = str(old.get("kind") or "unknown").removeprefix("unlearnable-")
            raise UnlearnableError(f"{out} holds a different {what} run (config "
                                   f"{old.get('config_hash')}); pass --overwrite or choose another --out")
        log(f"resuming the sweep in {out}")
    elif _has_files(out) and not overwrite:
        raise UnlearnableError(f"output folder {out} already holds files; pass --overwrite or choose another --out")
    elif overwrite and out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest, {"kind": kind, "config_hash": config_hash, "config": config})
    return config_hash


class SweepStore:
    """A resumable sweep's folder: ``run.json`` (kind and config hash) and one JSON file per finished piece,
    ``runs/<group>/<name>.json``, written atomically as each piece finishes."""

    def __init__(self, out: str | os.PathLike, *, kind: str, config: dict[str, Any], overwrite: bool = False):
        self.out = Path(out)
        self.root = self.out / "runs"
        self.config_hash = claim_sweep_folder(self.out, kind=kind, config=config, overwrite=overwrite)

    @classmethod
    def reader(cls, out: str | os.PathLike, config_hash: str) -> "SweepStore":
        """Another sweep's folder, to read its finished pieces (nothing is claimed or written)."""
        store = cls.__new__(cls)
        store.out, store.root, store.config_hash = Path(out), Path(out) / "runs", config_hash
        return store

    def path(self, group: str, name: str) -> Path:
        return self.root / group / f"{name}.json"

    def get(self, group: str, name: str) -> dict | None:
        """A finished piece of this very sweep (None if absent, unreadable or from another config)."""
        data = read_json(self.path(group, name))
        return data if data and data.get("config_hash") == self.config_hash else None

    def put(self, group: str, name: str, data: dict) -> dict:
        data = {"config_hash": self.config_hash, **data}
        atomic_write_json(self.path(group, name), data)
        return data

    def pieces(self, group: str) -> dict[str, dict]:
        """Every finished piece of ``group`` in this sweep, by name."""
        folder = self.root / group
        found = {p.stem: self.get(group, p.stem) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
        return {name: data for name, data in found.items() if data is not None}

    def digest(self) -> str:
        """Which pieces the folder holds (their names): equal for two workers that finished the same sweep."""
        names = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*.json")) if self.root.is_dir() else []
        return sha256_json(names)[:16]

    def has_pieces(self) -> bool:
        return self.root.is_dir() and any(p.is_file() for p in self.root.rglob("*.json"))


def start_run(out: str | os.PathLike, *, key: str, meta_file: str, overwrite: bool,
              checkpoint_every: int = 0, command: str = "", main: bool = True) -> tuple[bool, Path | None]:
    """Decide what to do with ``out`` and its checkpoint folder before a run writes anything.

    Returns ``(done, checkpoints)``: ``done`` when ``out`` already holds this very run; ``checkpoints`` is the
    folder to checkpoint into and resume from (None: no checkpointing). In a multi-process launch only the main
    process (``main=True``) creates, checks or discards the checkpoint folder; the others only read ``out``."""
    out = Path(out)
    partial = partial_dir(out)
    if _has_files(out) and not overwrite:
        old = recorded_key(out, meta_file) if out.is_dir() else None
        if old == key:
            if main:
                shutil.rmtree(partial, ignore_errors=True)  # a stale checkpoint of the finished run
            return True, None
        what = f"a different run (run key {old}, this one is {key})" if old else "files"
        raise UnlearnableError(f"output folder {out} already holds {what}; pass --overwrite to replace it or choose "
                               "another --out")
    if not main:
        return False, partial if checkpoint_every > 0 or (partial.exists() and not overwrite) else None
    if partial.exists():
        info = read_json(partial / RUN_FILE) or {}
        if overwrite:
            log(f"--overwrite: discarding the checkpoints in {partial}")
            shutil.rmtree(partial)
        elif info.get("run_key") != key:
            raise UnlearnableError(
                f"{partial} holds checkpoints of a different run (run key {info.get('run_key')}, this one is {key}); "
                "rerun the command that made them to resume it, or pass --overwrite to discard them")
        else:
            ckpt = latest_checkpoint(partial)
            log(f"resuming from {ckpt}" if ckpt else f"{partial} has no complete checkpoint yet; starting over")
            return False, partial
    if checkpoint_every > 0:
        partial.mkdir(parents=True, exist_ok=True)
        atomic_write_json(partial / RUN_FILE, {"run_key": key, "command": command, "out": str(out)})
        return False, partial
    return False, None


def finish_run(checkpoints: Path | None) -> None:
    """Remove the checkpoint folder once the run's output is safely written."""
    if checkpoints is not None:
        shutil.rmtree(checkpoints, ignore_errors=True)


@contextlib.contextmanager
def keep_checkpoints_only_if_useful(checkpoints: Path | None) -> Iterator[None]:
    """On any error or interruption, keep ``checkpoints`` only if it holds a complete checkpoint to resume."""
    try:
        yield
    except BaseException:
        if checkpoints is not None and latest_checkpoint(checkpoints) is None:
            shutil.rmtree(checkpoints, ignore_errors=True)
        raise


def _step(path: Path) -> int:
    try:
        return int(path.name[len(CHECKPOINT_PREFIX):])
    except ValueError:
        return -1


def latest_checkpoint(folder: str | os.PathLike | None) -> Path | None:
    """The newest *complete* ``checkpoint-N`` in ``folder`` (None if there is none)."""
    if folder is None or not Path(folder).is_dir():
        return None
    done = [p for p in Path(folder).glob(f"{CHECKPOINT_PREFIX}*")
            if _step(p) >= 0 and (p / CHECKPOINT_DONE).is_file()]
    return max(done, key=_step) if done else None


def mark_complete(checkpoint: str | os.PathLike, **info: Any) -> None:
    """Mark ``checkpoint`` complete, then delete every other checkpoint beside it (older or unfinished)."""
    checkpoint = Path(checkpoint)
    atomic_write_json(checkpoint / CHECKPOINT_DONE, {"step": _step(checkpoint), **info})
    for other in checkpoint.parent.glob(f"{CHECKPOINT_PREFIX}*"):
        if other != checkpoint and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)
