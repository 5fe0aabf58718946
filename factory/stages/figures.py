"""One evaluated build's figures, as the card's paper row and the report read them: BuildFigures, and
how it is made from a build's own files (its manifest's settings and artifact record, its scores and
speed). The report (factory.fleet) reads the same record from published repos too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from factory.methods import get_method
from factory.pipeline.build import Build
from factory.pipeline.manifest import MANIFEST, Manifest
from factory.recipe import Settings
from factory.recipe.tasks import primary_metric


@dataclass
class BuildFigures:
    """One evaluated build, as the report reads it (from a build folder or a published repo)."""

    source: str  # the build folder (relative to the workdir) or the repo id it was read from
    commit: str | None
    repo_id: str | None
    recipe: str
    model: str
    kind: str
    method: str
    paper_name: str | None
    paper_bits: str
    bits: int
    group_size: int | str
    scheme: str
    output_format: str
    simulated: bool  # the method stores dequantized full-size weights (QuantMethod.simulated)
    finetune: bool
    scores: dict
    speed: dict | None
    size_bytes: int | None
    effective_bits: float | None
    effective_bits_source: str  # counted | nominal | file size (the method says)

    @property
    def smoke(self) -> bool:
        return bool(self.scores.get("smoke"))

    @property
    def eval_runtime(self) -> str | None:
        harness = self.scores.get("harness") or {}
        return harness.get("loaded_as") or harness.get("placement")

    @property
    def speed_runtime(self) -> str | None:
        return (self.speed or {}).get("runtime") if self.speed else None

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Decode speed at batch size 1 (the single-user figure), where it was measured."""
        for batch in ((self.speed or {}).get("build") or {}).get("batches", []):
            if batch.get("batch_size") == 1:
                return batch.get("decode_tokens_per_s")
        return None

    @property
    def mean_recovery(self) -> float | None:
        return self.scores.get("mean_recovery")

    def labels(self) -> list[str]:
        out = []
        if self.smoke:
            out.append("smoke")
        if self.simulated:
            out.append("simulated")
        if self.eval_runtime:
            out.append(f"eval: {self.eval_runtime}")
        if self.speed_runtime:
            out.append(f"speed: {self.speed_runtime}")
        return out


def bits_of(build: BuildFigures) -> float:
    """The bit width as the paper gives it (BiLLM's 1.1, PB-LLM's 1.7), else the recipe's: what the
    tables, plots and Collections order and plot builds by."""
    try:
        return float(build.paper_bits)
    except (TypeError, ValueError):
        return float(build.bits)


def primary(scores: dict, task: str) -> dict | None:
    """The primary metric's row of a task ({"base", "quantized", "recovery", ...}), None when not measured."""
    metrics = (scores.get("tasks") or {}).get(task)
    if not metrics:
        return None
    name = next((m for m, row in metrics.items() if row.get("primary")), None) or primary_metric(metrics)
    return {"metric": name, **metrics[name]}


class _Record(dict):
    def get(self, name, default=None):  # the shape of StageRecord.get
        value = super().get(name)
        return default if value is None else value


def build_figures(build: Build, settings_data, record: dict, scores: dict, speed: dict | None, source: str,
                  repo_id: str | None, commit: str | None, size_bytes: int | None) -> BuildFigures:
    """The record of `build` from what was read of it: the settings it was built with (None: the
    recipe's), its artifact record, scores and speed, and where they were read from."""
    settings = Settings.model_validate(settings_data) if settings_data is not None else build.settings
    method = get_method(settings.method)
    bits, how = method.effective_bits(settings, _Record(record))
    return BuildFigures(
        source=source, commit=commit, repo_id=repo_id, recipe=build.recipe.name, model=build.entry.id,
        kind=settings.kind, method=method.name, paper_name=method.paper_name,
        paper_bits=method.paper_bits_label(settings), bits=settings.bits, group_size=settings.group_size,
        scheme=settings.scheme_label, output_format=method.output_format, simulated=method.simulated,
        finetune=settings.finetune is not None,
        scores=scores, speed=speed, size_bytes=size_bytes, effective_bits=bits, effective_bits_source=how)


def figures_for(build: Build, scores: dict, speed: dict | None, repo_id: str | None) -> BuildFigures:
    """One local build as the report reads it, from figures already loaded (the card stage's)."""
    manifest = Manifest.read(build.dir / MANIFEST)
    record = manifest.stage(build.artifact_stage)
    data = record.model_dump() if record is not None else {}
    return build_figures(build, (manifest.fingerprint_inputs or {}).get("settings"), data, scores, speed,
                         relative(build.dir, build.root), repo_id, None, data.get("size_bytes"))


def relative(path: Path, root: Path) -> str:
    """`path` as a source is named: relative to the workdir `root` where it lies under it."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
