"""The artifact stage: base checkpoint + effective settings -> builds/<recipe>/<model>/model/.

One stage for every method; `quantize` and `finetune` are its two verbs (a method names its verb,
`QuantMethod.stage`). The method does the work (`QuantMethod.build`) with a small context, not the
pipeline: this stage fetches the base model, lets the method refuse bad input before the stage starts
(`preflight`), runs the method in an aside folder, writes the recipe beside the artifact and records
sizes. Scratch that must outlive a killed run (LoRA training checkpoints) lives in the build's
.work/<fingerprint>/, outside the aside folder, and is removed once the stage is done.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from factory.core.errors import UserError
from factory.core.tables import mb, mb_value, text_table
from factory.engines.base_models import fetch_base, weights_size
from factory.methods.base import BuildContext
from factory.pipeline.build import Build, StageResult, run_stage
from factory.pipeline.stage import Options, Stage
from factory.registry import get_method

FACTORY_RECIPE = "factory_recipe.yaml"
WORK = ".work"  # resumable scratch of the artifact stage, per fingerprint


def write_build_recipe(out: Path, build: Build) -> None:
    """The recipe travels with the artifact: what was asked, and what it resolved to."""
    (out / FACTORY_RECIPE).write_text(yaml.safe_dump({
        "recipe": build.recipe.model_dump(mode="json", exclude_none=True, exclude={"models"}, by_alias=True),
        "model": build.entry.model_dump(mode="json", exclude_none=True),
        "effective_settings": build.settings.model_dump(mode="json"),
        "fingerprint": build.fingerprint(),
    }, sort_keys=False))


def check_verb(build: Build, verb: str) -> None:
    """`factory quantize` on a LoRA recipe (or `finetune` on a quantization one) names the right verb."""
    if build.artifact_stage != verb:
        raise UserError(f"{build.recipe.name}: method {build.recipe.method} is built by "
                        f"`factory {build.artifact_stage}`, not `{verb}`")


def build_artifact(build: Build, log=print) -> StageResult:
    """Build one (recipe, model) with its method, or skip it when a finished build has the same fingerprint."""
    stage = build.artifact_stage
    if build.stage_done(stage):
        return run_stage(build, stage, lambda out: {})  # finds it done, skips
    base = fetch_base(build.entry, build.recipe_dir)
    ctx = BuildContext(settings=build.settings, model_id=build.entry.id, model_revision=build.entry.revision,
                       base_dir=base.path, recipe_dir=build.recipe_dir,
                       work_dir=build.dir / WORK / build.fingerprint(), log=log)
    build.method.preflight(ctx)  # bad input leaves no trace in the build

    def work(out: Path) -> dict:
        figures = build.method.build(ctx, out)
        write_build_recipe(out, build)
        size, base_size = weights_size(out), base.size_bytes()
        return {
            "base_model_path": str(base.path),
            "base_revision": base.revision,
            "size_bytes": size,
            "base_size_bytes": base_size,
            "compression_ratio": round(base_size / size, 3) if size else None,
            **figures,
        }

    result = run_stage(build, stage, work)
    shutil.rmtree(build.dir / WORK, ignore_errors=True)  # the scratch of a finished build
    return result


def quantize(build: Build, log=print) -> StageResult:
    """The `quantize` verb: a quantization method's build."""
    check_verb(build, "quantize")
    return build_artifact(build, log)


def finetune(build: Build, log=print) -> StageResult:
    """The `finetune` verb: a LoRA method's build (resumes a killed run from its last checkpoint)."""
    check_verb(build, "finetune")
    return build_artifact(build, log)


class ArtifactStage(Stage):
    name = "artifact"
    verbs = ("quantize", "finetune")
    help = {"quantize": "quantize every model of a recipe (or one)",
            "finetune": "LoRA fine-tune (qlora, ir-qlora) every model of a recipe (or one); resumes a killed run"}
    output = "model"
    missing = {"quantize": "not quantized yet", "finetune": "not fine-tuned yet"}

    def before(self, recipe, options: Options) -> list[str]:
        method = get_method(recipe.method)
        if options.verb and method.stage != options.verb:
            raise UserError(f"{recipe.name}: method {recipe.method} is built by `factory {method.stage}`, "
                            f"not `{options.verb}`")
        note = method.console_note()
        return [f"note: {note}"] if note else []

    def preflight(self, build: Build, options: Options) -> None:
        if options.verb:
            check_verb(build, options.verb)

    def run(self, build: Build, options: Options) -> StageResult:
        return build_artifact(build, options.log)

    def header(self, build: Build, options: Options) -> str:
        return (f"{build.artifact_stage} {build.recipe.name} / {build.entry.id} [{build.settings.scheme_label}, "
                f"fingerprint {build.fingerprint()}]")

    def lines(self, build: Build, result: StageResult, options: Options) -> list[str]:
        return [f"  skipped: {result.output} is already built with this fingerprint"] if result.skipped else []

    def after(self, results: list) -> list[str]:
        rows = [("model", "output", "size", "vs base", "wall time", "peak RSS", "")]
        for build, r in results:
            rec = r.record
            ratio = rec.get("compression_ratio")
            rows.append((build.entry.id, str(r.output), mb(rec.get("size_bytes")),
                         f"{ratio:.2f}x smaller" if ratio else "-", f"{rec.get('wall_time_s', 0):.1f} s",
                         mb_value(rec.get("peak_rss_mb")), "(reused)" if r.skipped else ""))
        return [text_table(rows)]

    def published(self, build: Build, result: StageResult) -> str:
        return f"  {build.artifact_stage}: " + ("reused the finished build" if result.skipped
                                               else f"done in {result.record.wall_time_s:.1f} s")
