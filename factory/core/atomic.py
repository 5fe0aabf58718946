"""A folder is either complete or absent: written aside, then swapped into place.

Every output of the factory (a build stage, a cached base evaluation, the converted demo model,
the lmms-eval task copy, a local publish target) goes through `atomic_dir`.

The swap: the new copy is written to `<prefix><name>.partial-<pid>` beside the target. When the
target does not exist yet it is renamed into place. When it does, the two folders are exchanged
with one `renameat2(RENAME_EXCHANGE)` call (Linux): the target path never stops existing and a
reader sees the complete old copy or the complete new one, never a mix and never nothing; the
old copy, now under the partial name, is then removed. Where the kernel or file system cannot
exchange (not Linux, an old kernel), the old copy is renamed aside to `<prefix><name>.old-<pid>`
first and the new one renamed in: the target is missing for the moment between the two renames,
and a run killed right there leaves the old copy aside, which the next run puts back
(`remove_stale`). A plain rename cannot replace a non-empty folder, and a symlink swap would
turn the target into a link: the exchange keeps it an ordinary folder.

Partial and old copies left by killed runs (SIGKILL, a power cut) are removed by the next run
that writes the same target: those of dead processes always, every one when the caller holds the
target's lock (factory.core.locks), which makes the pid check (and pid reuse) irrelevant.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _aside(target: Path, prefix: str, kind: str) -> list[Path]:
    return sorted(target.parent.glob(f"{prefix}{target.name}.{kind}-*"))


def _owner_gone(copy: Path, owned: bool) -> bool:
    pid = copy.name.rsplit("-", 1)[-1]
    if not pid.isdigit():
        return False
    return owned or int(pid) == os.getpid() or not _pid_alive(int(pid))


def remove_stale(target: Path, prefix: str = "", owned: bool = False) -> None:
    """Tidy what killed runs left beside `target`: put back an old copy a run moved aside and never
    replaced (the target is missing), then remove partial and old copies whose process is gone
    (every one when `owned`: the caller holds the target's lock, so no live run is writing them)."""
    if not target.exists():
        olds = [p for p in _aside(target, prefix, "old") if p.is_dir() and _owner_gone(p, owned)]
        if olds:
            newest = max(olds, key=lambda p: p.stat().st_mtime)
            with contextlib.suppress(OSError):
                os.rename(newest, target)
    for kind in ("partial", "old"):
        for stale in _aside(target, prefix, kind):
            if _owner_gone(stale, owned):
                shutil.rmtree(stale, ignore_errors=True)


def remove_stale_in(folder: Path, prefix: str = "") -> None:
    """remove_stale for every target in `folder` (copies of dead processes only)."""
    if not folder.is_dir():
        return
    names = set()
    for kind in ("partial", "old"):
        for copy in folder.glob(f"{prefix}*.{kind}-*"):
            stem = copy.name[len(prefix):].rsplit(f".{kind}-", 1)[0]
            if stem:
                names.add(stem)
    for name in sorted(names):
        remove_stale(folder / name, prefix)


@contextlib.contextmanager
def atomic_dir(target: Path, prefix: str = "", owned: bool = False) -> Iterator[Path]:
    """Yield an empty folder beside `target`; when the block ends without error it replaces
    `target` (a reader sees the old or the new copy, never a mix); on any error, or an interrupt,
    it is removed. `prefix` (e.g. ".") hides the aside copies in a folder others list; `owned`:
    the caller holds the target's lock (see remove_stale)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target, prefix, owned)
    partial = target.with_name(f"{prefix}{target.name}.partial-{os.getpid()}")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    try:
        yield partial
        replace_dir(partial, target, prefix)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def replace_dir(source: Path, target: Path, prefix: str = "") -> None:
    """Move `source` to `target`, replacing what is there; see the module docstring for how."""
    if target.exists() or target.is_symlink():
        if exchange(source, target):
            shutil.rmtree(source, ignore_errors=True)  # the old copy, now under the partial name
            return
        old = target.with_name(f"{prefix}{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        try:
            os.replace(source, target)
        except BaseException:
            os.replace(old, target)  # put the old copy back: the target is never left missing by us
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        # another process put a copy there meanwhile (no lock held): exchange with it instead
        replace_dir(source, target, prefix)


@functools.cache
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (renameat2 RENAME_EXCHANGE); False where that is not possible."""
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))
