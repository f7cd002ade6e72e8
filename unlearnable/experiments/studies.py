"""Optuna studies shared by workers: where they are stored, which trials were cut off, and optimising together.

One process by default: a SQLite file in the run folder. With ``search.storage`` (an RDB URL such as
``postgresql://user@host/db``, or a journal file, ``journal:PATH`` or a path ending in ``.log``), several
``unlearnable immunize --attacker search`` processes started with the same config and output folder pull trials
from the same studies. Each trial records the worker that runs it (host and process id), so a trial left running
by a worker that died on this host is run again, while a live worker's trial is left alone.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import UnlearnableError
from ..runs import locked

#: the schemes Optuna's RDB storage takes (SQLAlchemy URLs)
RDB_SCHEMES = ("sqlite://", "postgresql", "mysql", "oracle", "mssql")
WORKER_ATTR = "worker"
SURPLUS_ATTR = "surplus"


#: the constraint excess of a diverged run (a NaN loss): far out of bounds, and finite (Optuna refuses a NaN
#: constraint value; strict JSON readers refuse Infinity)
DIVERGED = 1e9


def bounded_excess(excess: float) -> float:
    """A constraint excess Optuna and JSON both take: NaN is :data:`DIVERGED`, the rest clipped to +-DIVERGED."""
    return DIVERGED if math.isnan(excess) else min(max(excess, -DIVERGED), DIVERGED)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UnlearnableError("the attacker search needs optuna: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def journal_path(storage: str) -> Path | None:
    """The journal file a storage spec names (None: an RDB URL)."""
    if storage.startswith(RDB_SCHEMES):
        return None
    return Path(storage.removeprefix("journal:")).expanduser()


def check_storage(storage: str, flag: str = "--search.storage") -> None:
    """An RDB URL, or a journal file whose folder exists: before any model loads."""
    path = journal_path(storage)
    if path is not None and not path.parent.is_dir():
        raise UnlearnableError(f"{flag}: the folder of journal file {path} does not exist; create it, or give an "
                               "RDB URL (postgresql://..., mysql://..., sqlite:///...)")


def storage_for(storage: str | None, default_file: Path):
    """What Optuna's ``create_study`` takes: ``storage`` as given (an RDB URL, or a journal file opened with a
    lock that works across processes), or the SQLite file ``default_file``."""
    if storage is None:
        return f"sqlite:///{default_file}"
    path = journal_path(storage)
    if path is None:
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))


def worker_id() -> dict[str, Any]:
    """This process as a trial records it: host, process id and the process's start (so that a later process
    that happens to get the same id is not taken for it)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _started(os.getpid())}


def _started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from /proc); None where that is not readable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the parenthesised command name


def _alive(worker: dict[str, Any] | None) -> bool:
    """Whether the worker that started a trial still runs: known only on this host (elsewhere: assumed alive)."""
    if not worker:
        return False  # a trial of a version that did not record its worker: its process is gone
    if worker.get("host") != socket.gethostname():
        return True
    if worker.get("pid") == os.getpid():
        return False  # this very process is starting over: its own earlier trial was cut off
    try:
        os.kill(int(worker["pid"]), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        pass
    recorded = worker.get("started")
    return recorded is None or _started(int(worker["pid"])) in (None, recorded)  # not a new process, same id


#: seconds a just-asked trial may run untagged: another worker asks it and tags it with its id a moment later
UNTAGGED_GRACE = 60.0


def _being_tagged(trial) -> bool:
    """A running trial without a worker tag that started moments ago: its worker is tagging it, not gone."""
    start = trial.datetime_start
    return (WORKER_ATTR not in trial.user_attrs and start is not None
            and (datetime.datetime.now() - start).total_seconds() < UNTAGGED_GRACE)


def requeue_interrupted(study) -> int:
    """A trial cut off by an interruption (left RUNNING by a worker that is gone, or FAILed by a signal) is run
    again with the same parameters; a live worker's running trial is left alone. Returns how many were re-queued."""
    states = _optuna().trial.TrialState
    requeued = 0
    for t in study.get_trials(deepcopy=False):
        if (t.state not in (states.RUNNING, states.FAIL) or study.user_attrs.get(f"requeued_{t.number}")
                or t.user_attrs.get(SURPLUS_ATTR)):
            continue
        if t.state == states.RUNNING:
            if _alive(t.user_attrs.get(WORKER_ATTR)) or _being_tagged(t):
                continue
            study.tell(t.number, state=states.FAIL)
        keep = {k: t.user_attrs[k] for k in ("defaults",) if k in t.user_attrs}  # what made the trial what it was
        study.enqueue_trial(t.params, user_attrs={**keep, "retry_of": t.number}, skip_if_exists=False)
        study.set_user_attr(f"requeued_{t.number}", True)
        requeued += 1
    return requeued


def finished(study) -> list:
    states = _optuna().trial.TrialState
    return [t for t in study.get_trials(deepcopy=False) if t.state in (states.COMPLETE, states.PRUNED)]


def running(study) -> list:
    states = _optuna().trial.TrialState
    return [t for t in study.get_trials(deepcopy=False) if t.state == states.RUNNING]


class _Surplus(Exception):
    """A trial started when the study already had its trials finished or under way elsewhere."""


def optimize(study, objective: Callable, n_trials: int, *, poll_seconds: float = 5.0,
             done: Callable[[Any], bool] | None = None) -> None:
    """Run trials until ``n_trials`` are finished in the study, whichever worker runs them, or until ``done(study)``
    holds, then wait for the other workers' running trials (re-queueing those of a worker that died), so that every
    worker then reads the same finished study. A trial started when enough are finished or under way with a lower
    number, or once the study is done, is not run (marked failed, ``surplus``): the study never holds more than
    ``n_trials`` finished trials."""
    done = done or (lambda _study: False)

    def tagged(trial):
        trial.set_user_attr(WORKER_ATTR, worker_id())
        ahead = [t for t in running(study) if t.number < trial.number]
        if len(finished(study)) + len(ahead) >= n_trials or done(study):
            trial.set_user_attr(SURPLUS_ATTR, True)
            study.stop()
            raise _Surplus("the study is done, or its last trials are under way in other workers: this one is not "
                           "needed")
        return objective(trial)

    while True:
        requeue_interrupted(study)
        others = [t for t in running(study) if _alive(t.user_attrs.get(WORKER_ATTR))]
        left = 0 if done(study) else n_trials - len(finished(study)) - len(others)
        if left > 0:
            study.optimize(tagged, n_trials=left, catch=(_Surplus,), gc_after_trial=True,
                           callbacks=[lambda st, _t: st.stop() if done(st) else None])
        elif not others:
            return
        else:
            time.sleep(poll_seconds)


def enqueue_once(study, lock_path: Path, trials: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Queue the study's first trials (``(params, user_attrs)``) once, whichever worker starts first: each one the
    study does not hold yet (a search extended with more trials queues the starts its source had no room for)."""
    with locked(lock_path, wait=True, what="study"):
        # a queued trial is known by its fixed parameters, also while it runs (its params fill in as it suggests)
        held = [t.system_attrs.get("fixed_params") or t.params for t in study.get_trials(deepcopy=False)]
        for params, attrs in trials:
            if params not in held:
                study.enqueue_trial(params, user_attrs=attrs or None)
                held.append(params)
