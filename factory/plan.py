"""`plan`: for every (recipe, model), does the target hold a build with the current fingerprint?

fresh: it does; stale: it holds an older build, and the card metadata says why (recipe settings,
calibration data, base revision, library versions, evaluation); missing: no repo, or a repo that
holds no factory build. Only recipe files and the targets' metadata are read: no model loads.
"""

from __future__ import annotations

import glob
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from factory.build import Build
from factory.errors import UserError
from factory.fingerprint import factory_metadata
from factory.hub import RemoteBuild, Target
from factory.push import resolve_repo_id
from factory.recipe import load_recipe

DEFAULT_PATTERN = "recipes/*.yaml"


@dataclass
class PlanRow:
    recipe: str  # the recipe file, as given (what `factory publish` takes)
    recipe_name: str
    model: str
    repo_id: str
    status: str  # fresh | stale | missing
    reason: str
    fingerprint: str
    remote_fingerprint: str | None


def recipe_files(patterns: list[str]) -> list[str]:
    """Recipe paths and globs -> files; a pattern matching nothing is bad input."""
    files: list[str] = []
    for pattern in patterns or [DEFAULT_PATTERN]:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matched = [m for m in matched if Path(m).is_file()]
        if not matched:
            raise UserError(f"no recipe file matches {pattern!r}")
        files += [m for m in matched if m not in files]
    return files


def plan(patterns: list[str], target: Target, root: Path, org: str | None = None) -> list[PlanRow]:
    builds = []
    for path in recipe_files(patterns):
        recipe = load_recipe(path)
        for entry in recipe.models:
            build = Build(recipe, entry, root)
            builds.append((path, build, resolve_repo_id(build, target, org)))
    # Metadata reads are small and independent: ask for them side by side.
    with ThreadPoolExecutor(max_workers=8) as pool:
        remotes = list(pool.map(lambda item: target.lookup(item[2]), builds))
    return [compare(path, build, repo, remote) for (path, build, repo), remote in zip(builds, remotes)]


def compare(path: str, build: Build, repo: str, remote: RemoteBuild | None) -> PlanRow:
    local = factory_metadata(build)
    row = PlanRow(path, build.recipe.name, build.entry.id, repo, "missing", "", local["fingerprint"], None)
    if remote is None:
        row.reason = "no such repo"
        return row
    if not remote.factory or not remote.factory.get("fingerprint"):
        row.reason = "the repo holds no factory build"
        return row
    theirs = remote.factory
    row.remote_fingerprint = theirs["fingerprint"]
    if theirs["fingerprint"] == local["fingerprint"]:
        row.status = "fresh"
        return row
    row.status = "stale"
    row.reason = "; ".join(stale_reasons(local, theirs)) or "fingerprint differs"
    return row


def stale_reasons(local: dict, theirs: dict) -> list[str]:
    reasons = []
    if theirs.get("settings_digest") != local["settings_digest"]:
        reasons.append("recipe settings changed")
    if theirs.get("calibration_digest") != local["calibration_digest"]:
        reasons.append("calibration data changed")
    if theirs.get("base_revision") != local["base_revision"]:
        reasons.append(f"base revision moved ({_short(theirs.get('base_revision'))} -> {_short(local['base_revision'])})")
    old, new = theirs.get("libraries") or {}, local["libraries"]
    changed = [f"{name} {old.get(name, '?')} -> {new[name]}" for name in sorted(new) if old.get(name) != new[name]]
    if changed:
        reasons.append("library versions changed (" + ", ".join(changed) + ")")
    if not reasons and theirs.get("evaluation_fingerprint") != local["evaluation_fingerprint"]:
        reasons.append("evaluation settings changed")
    return reasons


def _short(revision: str | None) -> str:
    if not revision:
        return "?"
    return revision[:7] if len(revision) == 40 else revision


# ---------------------------------------------------------------- output formats


def to_builds(rows: list[PlanRow], include_fresh: bool = False) -> list[PlanRow]:
    return [r for r in rows if include_fresh or r.status != "fresh"]


def github_matrix(rows: list[PlanRow], include_fresh: bool = False) -> str:
    """The JSON a GitHub Actions `strategy.matrix` takes: one entry per build to (re)build."""
    include = [{"recipe": r.recipe, "model": r.model, "status": r.status, "reason": r.reason}
               for r in to_builds(rows, include_fresh)]
    return json.dumps({"include": include}, separators=(",", ":"))


def as_json(rows: list[PlanRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)


def table(rows: list[PlanRow], markdown: bool = False) -> str:
    head = ("recipe", "model", "repo", "status", "reason")
    body = [(r.recipe_name, r.model, r.repo_id, r.status, r.reason or "-") for r in rows]
    counts = {s: sum(r.status == s for r in rows) for s in ("fresh", "stale", "missing")}
    summary = f"{len(rows)} builds: {counts['fresh']} fresh, {counts['stale']} stale, {counts['missing']} missing"
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
        return "### factory plan\n\n" + "\n".join(lines) + f"\n\n{summary}\n"
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
    return "\n".join(lines) + f"\n{summary}"
