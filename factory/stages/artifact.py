"""The quantize stage: base checkpoint + effective settings -> builds/<recipe>/<model>/model/.

The recipe's method (factory/methods/) does the work; this stage fetches the base model, runs
the method in an aside folder, writes the recipe beside the checkpoint and records sizes.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from factory.pipeline.build import Build, StageResult, run_stage
from factory.engines.base_models import fetch_base, weights_size

FACTORY_RECIPE = "factory_recipe.yaml"


def build_artifact(build: Build, log=print) -> StageResult:
    """Run the stage that makes the build's artifact: quantize, or finetune for the LoRA methods."""
    if build.artifact_stage == "finetune":
        from factory.stages.finetune import finetune

        return finetune(build, log=log)
    return quantize(build)


def write_build_recipe(out: Path, build: Build) -> None:
    """The recipe travels with the artifact: what was asked, and what it resolved to."""
    (out / FACTORY_RECIPE).write_text(yaml.safe_dump({
        "recipe": build.recipe.model_dump(mode="json", exclude_none=True, exclude={"models"}, by_alias=True),
        "model": build.entry.model_dump(mode="json", exclude_none=True),
        "effective_settings": build.settings.model_dump(mode="json"),
        "fingerprint": build.fingerprint(),
    }, sort_keys=False))


def quantize(build: Build) -> StageResult:
    """Quantize one (recipe, model), or skip it when a finished build has the same fingerprint."""
    if build.artifact_stage != "quantize":
        from factory.core.errors import UserError

        raise UserError(f"{build.label}: method {build.recipe.method} is a LoRA fine-tuning method "
                        f"(run: factory finetune {build.recipe.source_path or build.recipe.name})")
    settings = build.settings

    def work(out: Path) -> dict:
        base = fetch_base(build.entry, build.recipe_dir)
        figures = build.method.quantize(base.path, settings, out, build.recipe_dir)
        write_build_recipe(out, build)
        size, base_size = weights_size(out), base.size_bytes()
        return {
            **figures,
            "base_model_path": str(base.path),
            "base_revision": base.revision,
            "size_bytes": size,
            "base_size_bytes": base_size,
            "compression_ratio": round(base_size / size, 3) if size else None,
        }

    return run_stage(build, "quantize", work)
