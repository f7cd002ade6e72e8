"""Stopping on a signal, cleanly: Ctrl-C (SIGINT) and the SIGTERM that schedulers, ``timeout`` and preemption send.

:func:`install` puts handlers on both (explicitly: a process started in the background of a non-interactive shell
inherits SIGINT as *ignored*, so Python's own Ctrl-C handling never starts there). Outside a training loop a
signal raises :class:`Interrupted` at once. Inside one (:func:`training_loop`) it only marks a stop as pending:
the trainer finishes the step it is in, writes a checkpoint where checkpointing is on, and then raises it, so a
preempted job loses nothing. A second signal while one is pending raises at once.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; ``exit_code`` is 128 + its number (130 SIGINT, 143 SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = EXIT_CODES.get(signum, 128 + signum)


_state = {"loops": 0, "pending": None}


def _handler(signum, frame) -> None:
    if _state["loops"] > 0 and _state["pending"] is None:
        _state["pending"] = signum  # stop at the next step boundary
        return
    raise Interrupted(signum)


def install() -> None:
    """Handle SIGINT and SIGTERM in this (main) thread, whatever the parent process left them as."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handler)


def pending() -> int | None:
    """The signal waiting for the current training step to end (None: none)."""
    return _state["pending"]


@contextlib.contextmanager
def training_loop() -> Iterator[None]:
    """Within this block a signal waits for the step boundary; on leaving it, a pending one is raised."""
    _state["loops"] += 1
    try:
        yield
    finally:
        _state["loops"] -= 1
    raise_pending()


def raise_pending() -> None:
    signum, _state["pending"] = _state["pending"], None
    if signum is not None:
        raise Interrupted(signum)
