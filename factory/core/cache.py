"""Made once per machine: a folder under the factory's cache, written aside and renamed into place
(factory.core.atomic) under a file lock, so that two jobs on one machine make it once and a killed
job leaves nothing a later one takes as complete. The base model's evaluations, speed figures and
F16 GGUF are kept this way."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

from factory.core.atomic import atomic_dir
from factory.core.paths import cache_root


@contextlib.contextmanager
def machine_lock(kind: str, target: Path, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """One job per `target` on this machine; `waiting()` is called when another job holds it."""
    from filelock import FileLock, Timeout  # the lock file library, loaded where a cache is written

    locks = cache_root() / "locks"  # beside, not inside, the cached folders: they hold only what was made
    locks.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(locks / f"{kind}-{target.parent.name}-{target.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if waiting:
            waiting()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def made_once(kind: str, target: Path, complete: Callable[[Path], bool], make: Callable[[Path], str | None],
              waiting: Callable[[], None] | None = None, owned: bool = True) -> str:
    """"cache" when `target` is complete already, "waited" when another job completed it while this one
    waited for the lock, else what `make(aside_folder)` returns ("measured", "store", ...), once the
    folder is in place."""
    if complete(target):
        return "cache"
    with machine_lock(kind, target, waiting):
        if complete(target):
            return "waited"
        with atomic_dir(target, owned=owned) as partial:
            made = make(partial)
        return made or "made"
