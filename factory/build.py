"""One (recipe, model) build: its folder, fingerprint, manifest and stage bookkeeping.

builds/<recipe>/<model-slug>/
    manifest.json   every stage: status, fingerprint, times, peak memory, sizes
    model/          the quantize stage's output (checkpoint + tokenizer/processor + recipes)

A stage writes into `<stage-dir>.partial-<pid>/`, is renamed into place when complete, and
only then is marked `done` in the manifest. A killed or failed run therefore never leaves a
stage that a later run takes as finished: the manifest says `running`/`failed`, or the
folder is missing, and the stage runs again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import resource
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from factory.calibration import calibration_digest
from factory.environment import environment_record
from factory.errors import first_line
from factory.models import slug, source_revision
from factory.recipe import ModelEntry, Recipe, Settings, settings_json

FINGERPRINT_LIBRARIES = ("torch", "transformers", "llmcompressor", "compressed-tensors", "bitsandbytes")
MANIFEST = "manifest.json"


def workdir_root(cli_value: str | None = None) -> Path:
    """--workdir, else FACTORY_WORKDIR, else the current directory; builds go in <root>/builds/."""
    return Path(cli_value or os.environ.get("FACTORY_WORKDIR") or ".")


def library_versions() -> dict[str, str]:
    """Versions that enter the fingerprint, without local labels: torch 2.13.0+cpu on the machine
    that plans and 2.13.0+cu128 on the GPU runner that builds are the same release."""
    versions = {}
    for name in FINGERPRINT_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


@dataclass
class Build:
    recipe: Recipe
    entry: ModelEntry
    root: Path  # the workdir; the build lives in root/builds/<recipe>/<slug>

    @property
    def settings(self) -> Settings:
        return self.recipe.effective(self.entry)

    @property
    def recipe_dir(self) -> Path:
        source = self.recipe.source_path
        return source.parent if source else Path(".")

    @property
    def dir(self) -> Path:
        return self.root / "builds" / self.recipe.name / slug(self.entry.id)

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    @cached_property
    def fingerprint_inputs(self) -> dict:
        """What the fingerprint hashes (computed once: a local base model's digest reads its files)."""
        settings = self.settings
        return {
            "settings": json.loads(settings_json(settings)),
            "calibration_data": calibration_digest(settings.calibration, self.recipe_dir) if settings.calibration else None,
            "base_model": {"id": self.entry.id, "source": self.entry.source,
                           "revision": source_revision(self.entry, self.recipe_dir)},
            "libraries": library_versions(),
        }

    def fingerprint(self) -> str:
        blob = json.dumps(self.fingerprint_inputs, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ------------------------------------------------------------ manifest

    def manifest(self) -> dict:
        path = self.dir / MANIFEST
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}  # a torn manifest is treated as no manifest: every stage runs again

    def _write_manifest(self, manifest: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{MANIFEST}.{os.getpid()}"
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.dir / MANIFEST)

    def _update_stage(self, stage: str, record: dict, fingerprint: str) -> None:
        manifest = self.manifest()
        manifest.update({
            "recipe": self.recipe.name,
            "model": self.entry.id,
            "fingerprint": fingerprint,
            "fingerprint_inputs": self.fingerprint_inputs,
            # the locks beside the fingerprinted versions; not fingerprinted (see environment.py)
            "environment": environment_record(),
        })
        manifest.setdefault("stages", {})[stage] = record
        self._write_manifest(manifest)

    def record_gates(self, failures: list[str]) -> None:
        """Quality gates of the last evaluation; a build that fails one is marked failed."""
        manifest = self.manifest()
        manifest["gates"] = {"passed": not failures, "failures": failures, "checked_at": _now()}
        manifest["status"] = "failed" if failures else "ok"
        self._write_manifest(manifest)

    def stage_done(self, stage: str, output: Path, fingerprint: str | None = None) -> bool:
        record = self.manifest().get("stages", {}).get(stage, {})
        return (record.get("status") == "done"
                and record.get("fingerprint") == (fingerprint or self.fingerprint())
                and output.is_dir())


@dataclass
class StageResult:
    stage: str
    output: Path
    skipped: bool
    record: dict


def run_stage(build: Build, stage: str, output: Path, work: Callable[[Path], dict],
              fingerprint: str | None = None) -> StageResult:
    """Run `work(partial_dir)` unless a finished output with this fingerprint exists.

    `work` fills the partial directory and returns figures for the manifest. On success the
    directory is renamed to `output` and the stage marked done; on any failure it is removed
    and the stage marked failed. `fingerprint` defaults to the build's; a later stage passes
    one that also covers its own settings.
    """
    fingerprint = fingerprint or build.fingerprint()
    if build.stage_done(stage, output, fingerprint):
        return StageResult(stage, output, True, build.manifest()["stages"][stage])

    for stale in output.parent.glob(f"{output.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed run
    partial = output.with_name(f"{output.name}.partial-{os.getpid()}")
    started = time.time()
    build._update_stage(stage, {"status": "running", "fingerprint": fingerprint, "pid": os.getpid(),
                                "started_at": _now()}, fingerprint)
    partial.mkdir(parents=True)
    try:
        figures = work(partial)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        build._update_stage(stage, {"status": "failed", "fingerprint": fingerprint, "started_at": _iso(started),
                                    "error": _one_line(exc), "traceback": traceback.format_exc(limit=8)}, fingerprint)
        raise
    if output.exists():
        shutil.rmtree(output)  # an older build (other fingerprint) is replaced
    os.replace(partial, output)
    record = {"status": "done", "fingerprint": fingerprint, "started_at": _iso(started), "finished_at": _now(),
              "wall_time_s": round(time.time() - started, 2), "peak_rss_mb": peak_rss_mb(), **figures}
    build._update_stage(stage, record, fingerprint)
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
