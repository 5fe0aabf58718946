"""What environment a build ran in: the locks it was installed from and a digest of what is installed.

Recorded in each build's manifest beside the fingerprinted library versions. It is not part of
the fingerprint: a lock change that moves no library shaping the weights or scores (a newer
pytest, say) must not rebuild the fleet.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import sys
from pathlib import Path

# Written by the Makefile when it installs .venv: `sha256sum <lock>.txt no-deps.txt bootstrap.txt`.
INSTALL_STAMP = ".installed"


@functools.cache
def environment_record() -> dict:
    return {"locks": installed_locks(), "installed_digest": installed_digest(), "python": sys.version.split()[0]}


def installed_locks() -> dict[str, str] | None:
    """{'cpu.txt': sha256, ...} for an environment the Makefile installed from the locks, else None."""
    stamp = Path(sys.prefix) / INSTALL_STAMP
    if not stamp.is_file():
        return None
    locks = {}
    for line in stamp.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) == 64 and name:
            locks[name.strip()] = digest
    return locks or None


def installed_digest() -> str:
    """sha256 over every installed distribution's `name==version`, sorted: two environments with the
    same digest hold the same packages, however they were installed."""
    pins = sorted({f"{(d.metadata['Name'] or '').lower()}=={d.version}" for d in importlib.metadata.distributions()})
    return hashlib.sha256("\n".join(pins).encode()).hexdigest()
