"""The files of a published build, checked: the hashes a target reports (sha256, git blob ids), the card's
metadata, and `verify`, which holds what a target lists against the local files.

Both publishing targets (factory.core.hub: the Hub and a local folder) list their files as RemoteFile rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

GITATTRIBUTES = ".gitattributes"  # the Hub adds it to every repo; not part of a build


@dataclass(frozen=True)
class RemoteFile:
    size: int
    sha256: str | None  # LFS files (and every file of a local folder)
    git_sha1: str | None  # regular files on the Hub


class Listing(Protocol):
    """What `verify` reads of a target (factory.core.hub.Target): the files a repo holds at a revision."""

    def listing(self, repo_id: str, revision: str | None) -> dict[str, RemoteFile]: ...


def verify(target: Listing, repo_id: str, revision: str | None, files: dict[str, Path],
           known_sha256: dict[str, str] | None = None) -> list[str]:
    """Compare what the target holds with the local files: names, sizes and hashes. [] when equal.
    `known_sha256`: local hashes already computed (the upload hashes every file it sends)."""
    known = known_sha256 or {}
    remote = {path: f for path, f in target.listing(repo_id, revision).items() if path != GITATTRIBUTES}
    problems = [f"missing on the target: {p}" for p in sorted(set(files) - set(remote))]
    problems += [f"not in the build but on the target: {p}" for p in sorted(set(remote) - set(files))]
    for path in sorted(set(files) & set(remote)):
        local, theirs = files[path], remote[path]
        if local.stat().st_size != theirs.size:
            problems.append(f"{path}: size {theirs.size} on the target, {local.stat().st_size} here")
        elif theirs.sha256 is not None and theirs.sha256 != (known.get(path) or sha256_file(local)):
            problems.append(f"{path}: sha256 differs")
        elif theirs.sha256 is None and theirs.git_sha1 is not None and theirs.git_sha1 != git_blob_sha1(local):
            problems.append(f"{path}: git blob hash differs")
    return problems


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The id git (and the Hub) gives a regular file: sha1 of 'blob <size>\\0' + content."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    h.update(path.read_bytes())
    return h.hexdigest()


def card_metadata(text: str) -> dict:
    """The YAML front matter of a card, {} when there is none or it does not parse."""
    if not text.startswith("---"):
        return {}
    try:
        data = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return {}
    return data if isinstance(data, dict) else {}
