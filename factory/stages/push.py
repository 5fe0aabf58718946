"""The push stage: a build's model/, eval/ and card/ -> one repo on a target (the Hub or a folder).

What is uploaded: the build's artifact (a checkpoint, or an adapter), the card (README.md and its plots) at the top, and
the evaluation records under evaluation/. Skipped when the target already holds this build's
fingerprint; verified file by file afterwards. The receipt goes into the manifest.

Published files hold no local path: every text file (JSON, YAML, Markdown, ...) that names a path
of this machine (the workdir, the build, the base model, the bundled task data, the caches, the
home folder, the user's name) is published as a copy with placeholders instead (`<workdir>`,
`<model>`, `<bundled-tasks>`, `~`, ...; factory.core.redact.LocalPaths), kept in the build's upload/
folder; the build's own files are left as they are. The push holds the build's lock and the
target repo's lock (factory.core.locks) from the lookup to the verification.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from factory.core.atomic import atomic_dir
from factory.core.errors import FactoryError, UserError
from factory.core.hub import RemoteBuild, Target
from factory.core.hub_files import verify
from factory.core.redact import LocalPaths
from factory.pipeline.build import Build
from factory.pipeline.fingerprint import publish_fingerprint
from factory.pipeline.manifest import StageRecord
from factory.pipeline.stage import Options, Stage
from factory.recipe import hub_repo_id_problem, repo_id

UPLOAD_DIR = "upload"  # in the build folder: the scrubbed copies push sends instead of the originals
TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".md", ".txt", ".csv", ".tsv", ".toml", ".cfg", ".ini")
# A vocabulary is data, not a record of this machine: a token such as "/root" must stay what it is.
VOCABULARY_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json",
                    "special_tokens_map.json")
MAX_TEXT_BYTES = 64 * 2**20
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


def repo_for(build: Build, options: Options) -> str:
    """The build's repo id for this command, resolved once (it may ask the Hub for the user name)."""
    if build.label not in options.repo_ids:
        options.repo_ids[build.label] = resolve_repo_id(build, options.target, options.org)
    return options.repo_ids[build.label]


def upload_files(build: Build) -> dict[str, Path]:
    """path in the repo -> local file, exactly what an upload sends (text files without local paths)."""
    files = build.artifact().upload_files()
    for p in sorted(build.stage_dir("card").iterdir()):
        if p.is_file():
            files[p.name] = p  # README.md and the plots it links, at the top of the repo
    for name in EVAL_FILES:
        if (build.stage_dir("evaluate") / name).is_file():
            files[f"evaluation/{name}"] = build.stage_dir("evaluate") / name
    speed = build.stage_dir("speed") / "speed.json"
    if _done(build, "speed") and speed.is_file():
        files["evaluation/speed.json"] = speed
    return without_local_paths(build, files)


def _done(build: Build, stage: str) -> bool:
    record = build.manifest().stage(stage)
    return record is not None and record.status == "done"


def local_paths(build: Build) -> LocalPaths:
    """This build's local paths, most specific first, and the placeholders published files show."""
    record = build.manifest().stage(build.artifact_stage)
    places: list[tuple[str | Path | None, str]] = [
        (build.model_dir, "<model>"),
        (record.get("base_model_path") if record else None, "<base-model>"),
        (build.recipe_dir / build.entry.path if build.entry.path else None, "<base-model>"),
        (build.dir, "<build>"),
        (build.root / "builds", "<workdir>/builds"),
        (build.recipe_dir, "<recipe-dir>"),
        (build.root, "<workdir>"),
    ]
    return LocalPaths(places)


def _scrub_text(path: str, text: str, paths: LocalPaths) -> str | None:
    """The text without local paths; in JSON only string values change (keys and structure stay)."""
    if not path.endswith(".json"):
        return paths.scrub(text)
    try:
        data = json.loads(text)
    except ValueError:
        return None
    clean = _scrub_values(data, paths)
    return None if clean == data else json.dumps(clean, indent=2, ensure_ascii=False) + "\n"


def _scrub_values(value, paths: LocalPaths):
    if isinstance(value, str):
        return paths.scrub(value)
    if isinstance(value, list):
        return [_scrub_values(v, paths) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_values(v, paths) for k, v in value.items()}
    return value


def without_local_paths(build: Build, files: dict[str, Path]) -> dict[str, Path]:
    """`files` with each text file that names a local path replaced by a scrubbed copy in upload/."""
    paths = local_paths(build)
    scrubbed: dict[str, str] = {}
    for path, local in files.items():
        if (not path.endswith(TEXT_SUFFIXES) or Path(path).name in VOCABULARY_FILES
                or local.stat().st_size > MAX_TEXT_BYTES):
            continue
        try:
            text = local.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        clean = _scrub_text(path, text, paths)
        if clean is not None and clean != text:
            scrubbed[path] = clean
    if not scrubbed:
        return files
    folder = build.dir / UPLOAD_DIR
    with build.lock():
        current = all((folder / path).is_file() and (folder / path).read_text(encoding="utf-8") == text
                      for path, text in scrubbed.items())
        if not current:
            with atomic_dir(folder, owned=True) as partial:
                for path, text in scrubbed.items():
                    (partial / path).parent.mkdir(parents=True, exist_ok=True)
                    (partial / path).write_text(text, encoding="utf-8")
    return {path: (folder / path if path in scrubbed else local) for path, local in files.items()}


def check_publishable(build: Build, force: bool) -> None:
    gates = build.manifest().gates
    if gates is not None and not gates.passed and not force:
        raise GatesFailed(f"{build.label}: not published: it failed its quality gates "
                          f"({'; '.join(gates.failures)}); pass --force to publish it anyway")


def push(build: Build, target: Target, repo: str, dry_run: bool = False, force: bool = False,
         log=print) -> PushResult:
    if dry_run:  # reads only: no lock, nothing written to the target
        return _push(build, target, repo, dry_run, force, log)
    check_publishable(build, force)  # refused before anything (a lock file included) is written to the target
    # The build's lock, then the target's: one order everywhere, so two runs never deadlock.
    with build.lock(), (target.lock(repo) if hasattr(target, "lock") else contextlib.nullcontext()):
        return _push(build, target, repo, dry_run, force, log)


def _push(build: Build, target: Target, repo: str, dry_run: bool, force: bool, log) -> PushResult:
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
    description = local_paths(build).scrub(
        f"Recipe: {build.recipe.name}\nBase model: {build.entry.id}\nBuild fingerprint: {fingerprint}\n"
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
        unchanged=pushed.unchanged, verified=True, wall_time_s=round(time.time() - started, 2)))
    if pushed.unchanged:  # --force over the same files: say what really happened
        log(f"  re-published {len(files)} files to {pushed.url}: identical to what it held, so nothing changed there"
            + (f" (no new commit: it stays at {pushed.commit[:12]})" if pushed.commit else "")
            + "; verified names, sizes and hashes")
    else:
        log(f"  pushed {len(files)} files to {pushed.url}"
            + (f" (commit {pushed.commit[:12]}, tag {tag})" if pushed.commit else "")
            + (f", {len(pushed.deleted)} deleted" if pushed.deleted else "")
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


class PushStage(Stage):
    name = "push"
    help = "upload finished builds (one commit each), verified"
    output = None  # it writes to the target
    needs = {"artifact": "", "evaluate": "nothing is published without scores", "card": ""}
    missing = "not pushed yet"
    target_options = "write"

    def preflight(self, build: Build, options: Options) -> None:
        repo_for(build, options)  # checked (and the Hub asked for the user name) before hours of work
        if hasattr(options.target, "require_token") and not options.dry_run:
            options.target.require_token()

    def run(self, build: Build, options: Options) -> PushResult:
        # refuses failed gates unless forced
        return push(build, options.target, repo_for(build, options), dry_run=options.dry_run, force=options.force,
                    log=options.log)

    def header(self, build: Build, options: Options) -> str:
        return f"push {build.recipe.name} / {build.entry.id} -> {options.target.description}"

    def published(self, build: Build, result: PushResult) -> None:
        return None  # push says what it did as it goes
