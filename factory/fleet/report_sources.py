"""Where `factory report` reads builds from: the local build folders, or the repos a plan's recipes publish.

Local: builds/<recipe>/<model>/ of each (recipe, model): manifest.json (the settings it was built with,
the artifact's size and effective bits), eval/scores.json and speed/speed.json. From a target (`--from-hub`):
the card's `factory` block (lookup), evaluation/scores.json, evaluation/speed.json and factory_build.json,
and the files' sizes from the tree listing: never a weight file.

A build that cannot be read (not evaluated yet, a truncated or foreign scores.json, no such repo) is left
out with the reason, which the report's footer lists; a file that is bad input also gets one warning line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from factory.core.errors import FactoryError, UserError, first_line
from factory.fleet.plan import lookups, recipe_files
from factory.fleet.report import LeftOut
from factory.methods import get_method
from factory.pipeline.build import Build
from factory.pipeline.manifest import MANIFEST, Manifest
from factory.recipe import load_recipe
from factory.stages.card import BUILD_FILE
from factory.stages.figures import BuildFigures, build_figures, relative
from factory.stages.push import resolve_repo_id

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")


@dataclass
class Found:
    builds: list[BuildFigures] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # one line per bad file

    def leave_out(self, source: str, reason: str, warn: bool = False) -> None:
        self.left_out.append(LeftOut(source, reason, bad=warn))
        if warn:
            self.warnings.append(f"warning: {reason}" + ("" if "left out" in reason else "; left out of the report"))


def check_scores(data, where: str) -> str | None:
    """Why `data` (a parsed scores.json) is not a factory evaluation, or None when it is."""
    if not isinstance(data, dict):
        return f"{where}: not a factory evaluation (a JSON {type(data).__name__}, not an object)"
    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        return f"{where}: not a factory evaluation (no 'tasks' scores)"
    for task, metrics in tasks.items():
        if not isinstance(metrics, dict) or not all(
                isinstance(row, dict) and "quantized" in row and "primary" in row for row in metrics.values()):
            return f"{where}: not a factory evaluation (task {task!r} has no base/quantized figures)"
    return None


def parse_scores(text: str, where: str) -> tuple[dict | None, str | None]:
    """(scores, None) or (None, the one line saying what is wrong with `where`)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        return None, f"{where}: not valid JSON (truncated?): {exc.msg} at line {exc.lineno}"
    problem = check_scores(data, where)
    return (None, problem) if problem else (data, None)


def recipe_builds(recipe_paths: list[str], root: Path) -> list[Build]:
    builds = []
    for path in recipe_files(recipe_paths):
        recipe = load_recipe(path)
        builds += [Build(recipe, entry, root) for entry in recipe.models]
    return builds


def _repo(build: Build, target, org: str | None) -> str | None:
    if target is None:
        return None
    try:
        return resolve_repo_id(build, target, org)
    except FactoryError:  # no org and no token to ask for one: the report still shows the build
        return None


def local(recipe_paths: list[str], root: Path, target=None, org: str | None = None) -> Found:
    found = Found()
    for build in recipe_builds(recipe_paths, root):
        source = relative(build.dir, root)
        scores_file = build.stage_dir("evaluate") / "scores.json"
        manifest = Manifest.read(build.dir / MANIFEST)
        evaluate = manifest.stage("evaluate")
        if not scores_file.is_file() or evaluate is None or evaluate.status != "done":
            found.leave_out(source, "not evaluated yet" + ("" if build.dir.is_dir() else " (no build folder)"))
            continue
        scores, problem = parse_scores(scores_file.read_text(encoding="utf-8", errors="replace"),
                                       relative(scores_file, root))
        if problem:
            found.leave_out(source, problem, warn=True)
            continue
        settings = (manifest.fingerprint_inputs or {}).get("settings")
        if settings is None:
            found.leave_out(source, f"{relative(build.dir / MANIFEST, root)}: no build settings (unreadable "
                            "or foreign manifest)", warn=True)
            continue
        speed = None
        speed_record, speed_file = manifest.stage("speed"), build.stage_dir("speed") / "speed.json"
        if speed_record is not None and speed_record.status == "done" and speed_file.is_file():
            speed = _json(speed_file.read_text(encoding="utf-8", errors="replace"), relative(speed_file, root),
                          found)
        artifact = None
        try:
            artifact = manifest.stage(get_method(settings.get("method", "")).stage)
        except UserError as exc:
            found.leave_out(source, f"{relative(build.dir / MANIFEST, root)}: {exc}", warn=True)
            continue
        record = artifact.model_dump() if artifact is not None else {}
        push = manifest.stage("push")
        try:
            found.builds.append(build_figures(build, settings, record, scores, speed, source,
                                              _repo(build, target, org), push.get("commit") if push else None,
                                              record.get("size_bytes")))
        except (UserError, ValueError) as exc:
            found.leave_out(source, f"{relative(build.dir / MANIFEST, root)}: {first_line(exc)}", warn=True)
    return found


def from_target(recipe_paths: list[str], root: Path, target, org: str | None = None) -> Found:
    """Every repo the recipes publish, read back from `target`: small files only."""
    found = Found()
    builds = recipe_builds(recipe_paths, root)
    repos = [_repo(build, target, org) for build in builds]
    remotes = lookups(target, [r for r in repos if r])
    by_repo = dict(zip([r for r in repos if r], remotes))
    for build, repo in zip(builds, repos):
        if repo is None:
            found.leave_out(f"{build.recipe.name} / {build.entry.id}", "no repo id (set publish.org or --org)")
            continue
        remote = by_repo.get(repo)
        where = f"{repo} on {target.description}"
        if remote is None:
            found.leave_out(repo, f"not published on {target.description}")
            continue
        text = target.read_file(repo, "evaluation/scores.json", remote.commit)
        if text is None:
            found.leave_out(repo, f"{where}: no evaluation/scores.json")
            continue
        scores, problem = parse_scores(text.decode("utf-8", errors="replace"), f"{repo}: evaluation/scores.json")
        if problem:
            found.leave_out(repo, problem, warn=True)
            continue
        speed_text = target.read_file(repo, "evaluation/speed.json", remote.commit)
        speed = _json(speed_text.decode("utf-8", errors="replace"), f"{repo}: evaluation/speed.json", found) \
            if speed_text is not None else None
        record_text = target.read_file(repo, BUILD_FILE, remote.commit)
        record = _json(record_text.decode("utf-8", errors="replace"), f"{repo}: {BUILD_FILE}", found) \
            if record_text is not None else None
        record = record if isinstance(record, dict) else {}
        artifact = record.get("artifact") if isinstance(record.get("artifact"), dict) else {}
        size = artifact.get("size_bytes")
        if size is None:  # an older build without factory_build.json: its weight files' sizes, from the listing
            sizes = target.file_sizes(repo, remote.commit)
            size = sum(n for path, n in sizes.items() if path.endswith(WEIGHT_SUFFIXES)) or None
        try:
            found.builds.append(build_figures(build, record.get("settings"), artifact, scores, speed, repo, repo,
                                              remote.commit, size))
        except (UserError, ValueError) as exc:
            found.leave_out(repo, f"{repo}: {BUILD_FILE}: {first_line(exc)}", warn=True)
    return found


def _json(text: str, where: str, found: Found):
    try:
        data = json.loads(text)
    except ValueError as exc:
        found.leave_out(where, f"{where}: not valid JSON (truncated?): {exc.msg}; its figures are left out",
                        warn=True)
        return None
    return data if isinstance(data, dict) else None
