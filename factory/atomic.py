"""A folder is either complete or absent: written aside, then renamed into place.

Every output of the factory (a build stage, a cached base evaluation, the converted demo model,
the lmms-eval task copy, a local publish target) goes through `atomic_dir`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(target: Path, prefix: str = "") -> None:
    """Remove partial/old copies of `target` left by processes that are gone (killed runs)."""
    for kind in ("partial", "old"):
        for stale in target.parent.glob(f"{prefix}{target.name}.{kind}-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
                shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: Path, prefix: str = "") -> Iterator[Path]:
    """Yield an empty folder beside `target`; when the block ends without error it replaces
    `target` (a reader sees the old or the new copy, never a mix); on any error it is removed.
    `prefix` (e.g. ".") hides the aside copies in a folder others list."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target, prefix)
    partial = target.with_name(f"{prefix}{target.name}.partial-{os.getpid()}")
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    replace_dir(partial, target, prefix)


def replace_dir(source: Path, target: Path, prefix: str = "") -> None:
    """Move `source` to `target`, replacing what is there (moved aside first, then removed)."""
    old = target.with_name(f"{prefix}{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(source, target)
    shutil.rmtree(old, ignore_errors=True)
