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

from factory.pipeline.build import Build
from factory.core.errors import UserError
from factory.pipeline.manifest import MANIFEST, Manifest
from factory.fleet.report import BuildFigures, LeftOut, parse_scores

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


def recipe_builds(recipe_paths: list[str], root: Path) -> list[Build]:
    from factory.fleet.plan import recipe_files
    from factory.recipe import load_recipe

    builds = []
    for path in recipe_files(recipe_paths):
        recipe = load_recipe(path)
        builds += [Build(recipe, entry, root) for entry in recipe.models]
    return builds


def _repo(build: Build, target, org: str | None) -> str | None:
    from factory.core.errors import FactoryError
    from factory.stages.push import resolve_repo_id

    if target is None:
        return None
    try:
        return resolve_repo_id(build, target, org)
    except FactoryError:  # no org and no token to ask for one: the report still shows the build
        return None


def _figures(build: Build, settings_data, record: dict, scores: dict, speed: dict | None, source: str,
             repo_id: str | None, commit: str | None, size_bytes: int | None) -> BuildFigures:
    from factory.methods import get_method
    from factory.recipe import Settings

    settings = Settings.model_validate(settings_data) if settings_data is not None else build.settings
    method = get_method(settings.method)

    class _Record(dict):
        def get(self, name, default=None):  # the shape of StageRecord.get
            value = super().get(name)
            return default if value is None else value

    bits, how = method.effective_bits(settings, _Record(record))
    return BuildFigures(
        source=source, commit=commit, repo_id=repo_id, recipe=build.recipe.name, model=build.entry.id,
        kind=settings.kind, method=method.name, paper_name=method.paper_name,
        paper_bits=method.paper_bits_label(settings), bits=settings.bits, group_size=settings.group_size,
        scheme=settings.scheme_label, output_format=method.output_format, finetune=settings.finetune is not None,
        scores=scores, speed=speed, size_bytes=size_bytes, effective_bits=bits, effective_bits_source=how)


def figures_for(build: Build, scores: dict, speed: dict | None, repo_id: str | None) -> BuildFigures:
    """One local build as the report reads it, from figures already loaded (the card stage's)."""
    manifest = Manifest.read(build.dir / MANIFEST)
    record = manifest.stage(build.artifact_stage)
    data = record.model_dump() if record is not None else {}
    return _figures(build, (manifest.fingerprint_inputs or {}).get("settings"), data, scores, speed,
                    _relative(build.dir, build.root), repo_id, None, data.get("size_bytes"))


def local(recipe_paths: list[str], root: Path, target=None, org: str | None = None) -> Found:
    found = Found()
    for build in recipe_builds(recipe_paths, root):
        source = _relative(build.dir, root)
        scores_file = build.stage_dir("evaluate") / "scores.json"
        manifest = Manifest.read(build.dir / MANIFEST)
        evaluate = manifest.stage("evaluate")
        if not scores_file.is_file() or evaluate is None or evaluate.status != "done":
            found.leave_out(source, "not evaluated yet" + ("" if build.dir.is_dir() else " (no build folder)"))
            continue
        scores, problem = parse_scores(scores_file.read_text(encoding="utf-8", errors="replace"),
                                       _relative(scores_file, root))
        if problem:
            found.leave_out(source, problem, warn=True)
            continue
        settings = (manifest.fingerprint_inputs or {}).get("settings")
        if settings is None:
            found.leave_out(source, f"{_relative(build.dir / MANIFEST, root)}: no build settings (unreadable "
                            "or foreign manifest)", warn=True)
            continue
        speed = None
        speed_record, speed_file = manifest.stage("speed"), build.stage_dir("speed") / "speed.json"
        if speed_record is not None and speed_record.status == "done" and speed_file.is_file():
            speed = _json(speed_file.read_text(encoding="utf-8", errors="replace"), _relative(speed_file, root),
                          found)
        artifact = None
        try:
            from factory.methods import get_method

            artifact = manifest.stage(get_method(settings.get("method", "")).stage)
        except UserError as exc:
            found.leave_out(source, f"{_relative(build.dir / MANIFEST, root)}: {exc}", warn=True)
            continue
        record = artifact.model_dump() if artifact is not None else {}
        push = manifest.stage("push")
        try:
            found.builds.append(_figures(build, settings, record, scores, speed, source, _repo(build, target, org),
                                         push.get("commit") if push else None, record.get("size_bytes")))
        except (UserError, ValueError) as exc:
            found.leave_out(source, f"{_relative(build.dir / MANIFEST, root)}: {first_line(exc)}", warn=True)
    return found


def from_target(recipe_paths: list[str], root: Path, target, org: str | None = None) -> Found:
    """Every repo the recipes publish, read back from `target`: small files only."""
    from factory.stages.card import BUILD_FILE
    from factory.fleet.plan import lookups

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
            found.builds.append(_figures(build, record.get("settings"), artifact, scores, speed, repo, repo,
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


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def first_line(exc: BaseException) -> str:
    from factory.core.errors import first_line as line

    return line(exc)
