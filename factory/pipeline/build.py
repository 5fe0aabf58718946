"""One (recipe, model) build: its folder, fingerprint, manifest and stage bookkeeping.

builds/<recipe>/<model-slug>/
    manifest.json   every stage: status, fingerprint, times, peak memory, sizes
    model/          the quantize (or finetune) stage's output: the build's artifact
    eval/           the evaluate stage's output
    card/           the card stage's output

A stage writes into `<stage-dir>.partial-<pid>/`, is renamed into place when complete, and
only then is marked `done` in the manifest. A killed or failed run therefore never leaves a
stage that a later run takes as finished: the manifest says `running`/`failed`, or the
folder is missing, and the stage runs again.

A stage runs, and the manifest is updated, under the build's lock (`.build.lock`, factory.core.locks):
a second run of the same build waits for the first and then finds the stage done. Errors are
recorded in the manifest without any credential (factory.core.redact).
"""

from __future__ import annotations

import os
import resource
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Callable

from factory.core.atomic import atomic_dir
from factory.core.environment import environment_record
from factory.core.errors import UserError, first_line
from factory.core.locks import hold
from factory.core.redact import scrub
from factory.core.safepath import segment
from factory.engines.base_models import slug
from factory.pipeline.artifact import Artifact
from factory.pipeline.fingerprint import build_inputs, digest
from factory.pipeline.manifest import MANIFEST, GateRecord, Manifest, StageRecord
from factory.recipe import ModelEntry, Recipe, Settings
from factory.registry import get_method, stage_named


def workdir_root(cli_value: str | None = None) -> Path:
    """--workdir, else FACTORY_WORKDIR, else the current directory; builds go in <root>/builds/.
    An empty --workdir, or one that is a file, is bad input (one line)."""
    if cli_value is not None and not cli_value.strip():
        raise UserError("--workdir is empty: give a folder (or leave the option out for $FACTORY_WORKDIR or .)")
    root = Path(cli_value or os.environ.get("FACTORY_WORKDIR") or ".")
    if root.exists() and not root.is_dir():
        raise UserError(f"workdir {root} is a file, not a folder")
    return root


@dataclass
class Build:
    recipe: Recipe
    entry: ModelEntry
    root: Path  # the workdir; the build lives in root/builds/<recipe>/<slug>

    @property
    def settings(self) -> Settings:
        return self.recipe.effective(self.entry)

    @property
    def method(self):
        return get_method(self.recipe.method)

    @property
    def label(self) -> str:
        return f"{self.recipe.name} / {self.entry.id}"

    @property
    def recipe_dir(self) -> Path:
        source = self.recipe.source_path
        return source.parent if source else Path(".")

    @property
    def dir(self) -> Path:
        # Both parts come from the recipe: each must be one safe folder name (no '/', no '..').
        return self.root / "builds" / segment(self.recipe.name, "recipe name") / slug(self.entry.id)

    def lock(self):
        """Held while a stage runs or the manifest changes (re-entrant; see factory.core.locks)."""
        return hold(self.dir / ".build.lock", f"the build {self.recipe.name} / {self.entry.id} ({self.dir})")

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    def stage_dir(self, stage: str) -> Path:
        return self.dir / stage_named(stage).output

    @cached_property
    def fingerprint_inputs(self) -> dict:
        """What the fingerprint hashes (computed once: a local base model's digest reads its files)."""
        return build_inputs(self)

    def fingerprint(self) -> str:
        return digest(self.fingerprint_inputs)

    # ------------------------------------------------------------ manifest

    def manifest(self) -> Manifest:
        return Manifest.read(self.dir / MANIFEST)

    def update_stage(self, stage: str, record: StageRecord) -> None:
        with self.lock():
            self._update_stage(stage, record)

    def _update_stage(self, stage: str, record: StageRecord) -> None:
        manifest = self.manifest()
        manifest.recipe, manifest.model = self.recipe.name, self.entry.id
        manifest.fingerprint, manifest.fingerprint_inputs = self.fingerprint(), self.fingerprint_inputs
        # the locks beside the fingerprinted versions; not fingerprinted (see environment.py)
        manifest.environment = environment_record()
        manifest.stages[stage] = record
        manifest.write(self.dir / MANIFEST)

    def record_gates(self, failures: list[str]) -> None:
        """Quality gates of the last evaluation; a build that fails one is marked failed."""
        with self.lock():
            manifest = self.manifest()
            manifest.gates = GateRecord(passed=not failures, failures=failures, checked_at=_now())
            manifest.status = "failed" if failures else "ok"
            manifest.write(self.dir / MANIFEST)

    def stage_done(self, stage: str, fingerprint: str | None = None) -> bool:
        """Finished, with this fingerprint (default: the build's), and its output in place."""
        record = self.manifest().stage(stage)
        output = stage_named(stage).output
        return (record is not None and record.status == "done"
                and record.fingerprint == (fingerprint or self.fingerprint())
                and (output is None or (self.dir / output).is_dir()))

    @property
    def artifact_stage(self) -> str:
        """The stage whose output is the build's artifact (quantize, or finetune for LoRA methods)."""
        return self.method.stage

    def require(self, stage: str, why: str = "") -> None:
        """Raise the one-line 'run this first' error unless `stage` is finished for this build (the
        stage runner calls it for every stage a stage needs; factory.pipeline.stage)."""
        stage = self.artifact_stage if stage == "artifact" else stage
        if stage == self.artifact_stage:
            done = self.stage_done(stage)
        else:
            record = self.manifest().stage(stage)
            done = record is not None and record.status == "done" and self.stage_dir(stage).is_dir()
        if not done:
            recipe_arg = self.recipe.source_path or self.recipe.name
            raise UserError(f"{self.label}: {stage_named(stage).missing_for(stage)}{'; ' + why if why else ''} "
                            f"(run: factory {stage} {recipe_arg} --model {self.entry.id})")

    def artifact(self) -> Artifact:
        """What the build produced, and how to load and upload it (once the artifact stage is done)."""
        record = self.manifest().stage(self.artifact_stage)
        return Artifact.from_record(self.method.artifact_kind, self.model_dir, record)


# Set when an interrupt (Ctrl-C, SIGTERM) stops a stage: which one, for the CLI's message.
interrupted_stage: str | None = None


@dataclass
class StageResult:
    stage: str
    output: Path
    skipped: bool
    record: StageRecord


def run_stage(build: Build, stage: str, work: Callable[[Path], dict], fingerprint: str | None = None) -> StageResult:
    """Run `work(partial_dir)` unless a finished output with this fingerprint exists.

    `work` fills the partial directory and returns figures for the manifest. On success the
    directory is renamed into place and the stage marked done; on any failure it is removed
    and the stage marked failed. `fingerprint` defaults to the build's; a later stage passes
    one that also covers its own settings.
    """
    fingerprint = fingerprint or build.fingerprint()
    output = build.stage_dir(stage)
    with build.lock():  # a second run of this build waits here, then finds the stage done
        if build.stage_done(stage, fingerprint):
            return StageResult(stage, output, True, build.manifest().stages[stage])

        started = time.time()
        build.update_stage(stage, StageRecord(status="running", fingerprint=fingerprint, pid=os.getpid(),
                                              started_at=_now()))
        try:
            with atomic_dir(output, owned=True) as partial:
                figures = work(partial)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):  # what the CLI says an interrupt stopped
                global interrupted_stage
                interrupted_stage = f"the {stage} stage of {build.label}"
            build.update_stage(stage, StageRecord(status="failed", fingerprint=fingerprint, started_at=_iso(started),
                                                  error=_one_line(exc),
                                                  traceback=scrub(traceback.format_exc(limit=8))))
            raise
        record = StageRecord(status="done", fingerprint=fingerprint, started_at=_iso(started), finished_at=_now(),
                             wall_time_s=round(time.time() - started, 2), peak_rss_mb=peak_rss_mb(), **figures)
        build.update_stage(stage, record)
        return StageResult(stage, output, False, record)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}".strip()
