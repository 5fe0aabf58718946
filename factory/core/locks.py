"""One run at a time per build and per publish target: file locks (the `filelock` library, flock on Unix).

A build (builds/<recipe>/<model>/.build.lock) is locked while a stage runs or its manifest is
updated; a target repo while it is looked up, written and verified (a local folder:
<root>/.locks/<org>--<name>.lock; the Hub: <FACTORY_CACHE>/locks/, which serialises the runs of one
machine; runs on different machines are kept apart by the commit's parent). A second run waits
for the first, saying so once, for at most FACTORY_LOCK_TIMEOUT seconds (default 600; 0: do not
wait), then stops with one line. The lock is the kernel's: a killed run (SIGKILL included)
holds nothing. Locks are re-entrant within a process (publish -> quantize -> stage -> manifest).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Iterator

from factory.core.env_settings import seconds_setting
from factory.core.errors import FactoryError

DEFAULT_TIMEOUT = 600.0

_locks: dict[str, object] = {}
_guard = threading.Lock()


class Busy(FactoryError):
    """Another run holds the lock (exit 1: nothing is wrong with the input; run again later)."""


def lock_timeout() -> float:
    return seconds_setting("FACTORY_LOCK_TIMEOUT", DEFAULT_TIMEOUT, lambda v: v >= 0,
                           "a number of seconds (0: do not wait)")


def _lock_for(path: Path):
    from filelock import FileLock

    key = os.path.abspath(path)
    with _guard:
        lock = _locks.get(key)
        if lock is None:
            lock = _locks[key] = FileLock(key, thread_local=False)
        return lock


@contextlib.contextmanager
def hold(path: Path, what: str, log=None) -> Iterator[None]:
    """Hold the lock file `path` (for `what`, as messages name it) for the block."""
    from filelock import Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock_for(path)
    if lock.is_locked:  # this process already holds it (re-entry)
        lock.acquire()
    else:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            wait = lock_timeout()
            holder = _holder(path)
            say = log or (lambda line: print(line, file=sys.stderr, flush=True))
            if wait > 0:
                say(f"  waiting for another factory run{holder} that holds {what} (at most {wait:.0f} s; "
                    "FACTORY_LOCK_TIMEOUT)")
            try:
                lock.acquire(timeout=wait)
            except Timeout:
                raise Busy(f"another factory run{holder} holds {what}"
                           + (f"; waited {wait:.0f} s" if wait > 0 else "")
                           + "; run again when it has finished (or raise FACTORY_LOCK_TIMEOUT)") from None
        _note_holder(path)
    try:
        yield
    finally:
        lock.release()


def _note_holder(path: Path) -> None:
    """Write our pid into the lock file (filelock truncates it only once it holds the lock)."""
    with contextlib.suppress(OSError):
        with open(path, "r+", encoding="ascii") as f:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text(encoding="ascii").strip())
        return f" (pid {pid})"
    return ""
