"""Filesystem paths built from identifiers (model ids, revisions, org and repo names, recipe names).

No path is built from an unchecked identifier: `segment` accepts one safe folder name (ASCII
letters, digits, `.`, `_`, `-`; not `.` or `..`), and `inside(root, ...)` joins and then checks
that the resolved result is still under `root` (no `..`, no absolute part, no symlink out).
`revision_problem` is git's own rule for a ref name (`git check-ref-format --allow-onelevel`),
or a 40-hex commit: what a recipe's `revision:` may hold.
"""

from __future__ import annotations

import re
from pathlib import Path

from factory.core.errors import UserError

SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
COMMIT = re.compile(r"[0-9a-f]{40}")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def segment(value: object, what: str) -> str:
    """`value` if it is one safe folder name, else a one-line UserError naming `what`."""
    if not isinstance(value, str) or not SAFE_SEGMENT.fullmatch(value) or value in (".", "..") or len(value) > 200:
        raise UserError(f"{what}: {value!r} is not a safe name (ASCII letters, digits, '.', '_', '-'; "
                        "not '.' or '..')")
    return value


def inside(root: Path, *parts: str, what: str = "path") -> Path:
    """root/parts..., refused unless it stays inside `root` once resolved (symlinks and `..` included)."""
    for part in parts:
        if not isinstance(part, str) or not part or "\x00" in part or Path(part).is_absolute():
            raise UserError(f"{what}: {part!r} is not a relative path")
    path = root.joinpath(*parts)
    base = root.resolve()
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise UserError(f"{what}: {'/'.join(parts)!r} leads outside {root}")
    return path


def revision_problem(revision: object) -> str | None:
    """Why `revision` is neither a 40-hex commit nor a valid git ref name (None: it is fine)."""
    if not isinstance(revision, str):
        return "must be a string"
    if COMMIT.fullmatch(revision):
        return None
    if not revision:
        return "must not be empty"
    if len(revision) > 255:
        return "is longer than 255 characters"
    if revision == "@":
        return "'@' is not a ref name"
    if revision.startswith(("/", "-")) or revision.endswith(("/", ".")):
        return "must not start with '/' or '-', nor end with '/' or '.'"
    if "//" in revision or ".." in revision or "@{" in revision:
        return "must not contain '//', '..' or '@{'"
    if _REF_FORBIDDEN.search(revision):
        return "must not contain spaces, control characters or any of ~ ^ : ? * [ \\"
    for part in revision.split("/"):
        if part.startswith(".") or part.endswith(".lock"):
            return "no part may start with '.' or end with '.lock'"
    return None


def check_revision(revision: str, what: str = "revision") -> str:
    problem = revision_problem(revision)
    if problem:
        raise UserError(f"{what} {revision!r}: {problem} (a branch, a tag or a 40-hex commit)")
    return revision
