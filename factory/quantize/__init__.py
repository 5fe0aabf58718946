"""The quantize stage: base checkpoint + effective settings -> builds/<recipe>/<model>/model/.

Each engine is one module with `quantize(base_dir, settings, out_dir, recipe_dir) -> dict`;
ENGINES maps a recipe's `method` to it. Adding a method means adding an adapter here, not
touching the others.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from factory.build import Build, StageResult, run_stage
from factory.models import fetch_base, weights_size
from factory.quantize import bitsandbytes_engine, llmcompressor_engine

ENGINES = {
    "rtn": llmcompressor_engine,
    "gptq": llmcompressor_engine,
    "awq": llmcompressor_engine,
    "smoothquant": llmcompressor_engine,
    "nf4": bitsandbytes_engine,
    "int8": bitsandbytes_engine,
}
FACTORY_RECIPE = "factory_recipe.yaml"


def quantize(build: Build) -> StageResult:
    """Quantize one (recipe, model), or skip it when a finished build has the same fingerprint."""
    settings = build.settings

    def work(out: Path) -> dict:
        base = fetch_base(build.entry, build.recipe_dir)
        figures = ENGINES[settings.method].quantize(base.path, settings, out, build.recipe_dir)
        # The recipe travels with the checkpoint: what was asked, and what it resolved to.
        (out / FACTORY_RECIPE).write_text(yaml.safe_dump({
            "recipe": build.recipe.model_dump(mode="json", exclude_none=True, exclude={"models"}),
            "model": build.entry.model_dump(mode="json", exclude_none=True),
            "effective_settings": settings.model_dump(mode="json"),
            "fingerprint": build.fingerprint(),
        }, sort_keys=False))
        size, base_size = weights_size(out), base.size_bytes()
        return {
            **figures,
            "base_model_path": str(base.path),
            "base_revision": base.revision,
            "size_bytes": size,
            "base_size_bytes": base_size,
            "compression_ratio": round(base_size / size, 3) if size else None,
        }

    return run_stage(build, "quantize", build.model_dir, work)
