"""The push stage: a build's model/, eval/ and card/ -> one repo on a target (the Hub or a folder).

What is uploaded: the build's artifact (a checkpoint, or an adapter), the card (README.md and its plots) at the top, and
the evaluation records under evaluation/. Skipped when the target already holds this build's
fingerprint; verified file by file afterwards. The receipt goes into the manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from factory.build import Build
from factory.errors import FactoryError, UserError
from factory.fingerprint import publish_fingerprint
from factory.hub import RemoteBuild, Target, verify
from factory.manifest import StageRecord
from factory.recipe import hub_repo_id_problem, repo_id

EVAL_FILES = ("scores.json", "metrics.json", "perplexity.json", "lm_eval_results.json", "lmms_eval_results.json")


@dataclass
class PushResult:
    repo_id: str
    fingerprint: str
    skipped: bool
    dry_run: bool
    location: str
    commit: str | None = None
    files: dict[str, Path] | None = None


class GatesFailed(FactoryError):
    """A build that failed its quality gates is not published without --force."""


def resolve_repo_id(build: Build, target: Target, org: str | None) -> str:
    name = repo_id(build.recipe, build.entry, org or build.recipe.publish.org or target.default_org())
    problem = hub_repo_id_problem(name)
    if problem:
        raise UserError(f"publish.repo: {problem}")
    return name


def upload_files(build: Build) -> dict[str, Path]:
    """path in the repo -> local file, exactly what an upload sends."""
    files = build.artifact().upload_files()
    for p in sorted(build.stage_dir("card").iterdir()):
        if p.is_file():
            files[p.name] = p  # README.md and the plots it links, at the top of the repo
    for name in EVAL_FILES:
        if (build.stage_dir("evaluate") / name).is_file():
            files[f"evaluation/{name}"] = build.stage_dir("evaluate") / name
    return files


def check_publishable(build: Build, force: bool) -> None:
    build.require("artifact")
    build.require("evaluate", why="nothing is published without scores")
    build.require("card")
    gates = build.manifest().gates
    if gates is not None and not gates.passed and not force:
        raise GatesFailed(f"{build.label}: not published: it failed its quality gates "
                          f"({'; '.join(gates.failures)}); pass --force to publish it anyway")


def push(build: Build, target: Target, repo: str, dry_run: bool = False, force: bool = False,
         log=print) -> PushResult:
    check_publishable(build, force)
    fingerprint = publish_fingerprint(build)
    files = upload_files(build)
    tag = f"factory-{fingerprint}"
    try:
        current = target.lookup(repo)
    except FactoryError as exc:
        if not dry_run:
            raise
        log(f"  (could not read {repo} from {target.description}: {exc})")
        current = None
    held = current.factory.get("fingerprint") if current and current.factory else None

    if dry_run:
        log(describe_upload(target, repo, files, current, fingerprint, tag, build.recipe.publish.private))
        return PushResult(repo, fingerprint, skipped=held == fingerprint and not force, dry_run=True,
                          location=target.location(repo), files=files)
    if held == fingerprint and not force:
        target.ensure_tag(repo, tag, current.commit)  # a run cut off after its commit left no tag
        log(f"  skipped: {target.description} already holds {repo} at fingerprint {fingerprint}")
        return PushResult(repo, fingerprint, skipped=True, dry_run=False, location=target.location(repo),
                          commit=current.commit)

    started = time.time()
    message = f"factory: {build.recipe.name} build of {build.entry.id} (fingerprint {fingerprint})"
    description = (f"Recipe: {build.recipe.name}\nBase model: {build.entry.id}\nBuild fingerprint: {fingerprint}\n"
                   f"Reproduce: factory publish {build.recipe.source_path or build.recipe.name} --model {build.entry.id}")
    pushed = target.publish(repo, files, message, description, tag, build.recipe.publish.private,
                            head=current.commit if current else None)
    problems = verify(target, repo, pushed.commit, files, pushed.sha256)
    if problems:
        raise FactoryError(f"{repo}: the published files do not match the build: {problems[0]}"
                           + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    build.update_stage("push", StageRecord(
        status="done", fingerprint=build.fingerprint(), publish_fingerprint=fingerprint,
        target=target.description, repo_id=repo, url=pushed.url, commit=pushed.commit, tag=pushed.tag,
        files=len(files), bytes=sum(p.stat().st_size for p in files.values()), deleted=pushed.deleted,
        verified=True, wall_time_s=round(time.time() - started, 2)))
    log(f"  pushed {len(files)} files to {pushed.url}" + (f" (commit {pushed.commit[:12]}, tag {tag})" if pushed.commit else "")
        + "; verified names, sizes and hashes")
    return PushResult(repo, fingerprint, skipped=False, dry_run=False, location=pushed.url, commit=pushed.commit,
                      files=files)


def describe_upload(target: Target, repo: str, files: dict[str, Path], current: RemoteBuild | None,
                    fingerprint: str, tag: str, private: bool) -> str:
    held = current.factory.get("fingerprint") if current and current.factory else None
    if current is None:
        state = f"create the repo ({'private' if private else 'public'})"
    elif held == fingerprint:
        state = f"nothing: it already holds fingerprint {fingerprint} (--force would upload again)"
    else:
        state = f"update it (it holds {held or 'no factory build'})"
    total = sum(p.stat().st_size for p in files.values())
    lines = [f"  dry run: nothing is written to {target.description}",
             f"  repo {repo}: would {state}",
             f"  one commit with {len(files)} files ({_size(total)}), tagged {tag}:"]
    width = max(len(p) for p in files)
    lines += [f"    {path.ljust(width)}  {_size(local.stat().st_size):>10}  <- {local}" for path, local in files.items()]
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
