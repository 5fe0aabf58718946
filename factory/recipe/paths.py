"""Recipe arguments -> recipe files: the one expansion every command that takes several recipes uses.

`validate`, `plan` and `rebuild` accept the same arguments: recipe files, folders (their *.yaml
and *.yml files, not recursive) and globs (quoted: factory expands them itself, so CI and shells
agree). Bad input is one line, exit 2: a glob that matches no recipe, a folder without recipes, an
empty argument. A path that does not exist is passed on, and load_recipe reports it as
`PATH: no such recipe file` with the other problems.
"""

from __future__ import annotations

import glob
from pathlib import Path

from factory.core.errors import UserError

DEFAULT_PATTERN = "recipes/*.yaml"
SUFFIXES = (".yaml", ".yml")


def _folder(path: Path) -> list[str]:
    return sorted(str(p) for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())


def recipe_files(arguments: list[str] | None, default: str | None = DEFAULT_PATTERN) -> list[str]:
    """Files, folders and globs -> recipe files, in order, each once."""
    patterns = list(arguments or ([default] if default else []))
    if not patterns:
        raise UserError("no recipe given: name recipe files, folders or globs")
    files: list[str] = []
    for pattern in patterns:
        if not pattern.strip():
            raise UserError("an empty recipe argument: name a recipe file, a folder or a glob")
        if glob.has_magic(pattern):
            matched: list[str] = []
            for hit in sorted(glob.glob(pattern)):
                path = Path(hit)
                matched += _folder(path) if path.is_dir() else ([hit] if path.is_file() else [])
            if not matched:
                raise UserError(f"no recipe file matches {pattern!r}")
        elif Path(pattern).is_dir():
            matched = _folder(Path(pattern))
            if not matched:
                raise UserError(f"no recipe file in the folder {pattern} (*.yaml or *.yml)")
        else:
            matched = [pattern]  # a file, or a missing one (load_recipe says so, in file:line form)
        files += [m for m in matched if m not in files]
    return files
