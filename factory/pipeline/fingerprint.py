"""Every fingerprint of a build, and the one digest they use.

build        the effective settings, calibration data, base revision and the versions of the
             libraries that shape the weights: a different value means different weights.
evaluation   the build's, plus the evaluation plan: a different value means different scores.
publish      what a published copy is compared by (`plan`, `push`): build + evaluation.

All are computable from the recipe alone (no build on disk), so `plan` loads no model. `build` is
a factory.pipeline.build.Build (not imported here: it imports this module).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from factory.engines.base_models import source_revision
from factory.engines.calibration import calibration_digest
from factory.engines.lora.data import ALPACA_HUB_ID, DEMO_FILE
from factory.recipe import settings_json
from factory.recipe.eval_plan import EvalPlan

# Every build's weights depend on these; a method adds the libraries it quantizes with.
BASE_LIBRARIES = ("torch", "transformers")


def digest(value: Any) -> str:
    """sha256 of the canonical JSON of `value`, shortened to 16 hex digits."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def library_versions(names: tuple[str, ...] = BASE_LIBRARIES) -> dict[str, str]:
    """Versions without local labels: torch 2.13.0+cpu on the machine that plans and 2.13.0+cu128
    on the GPU runner that builds are the same release."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def build_inputs(build) -> dict:
    """What the build fingerprint hashes."""
    settings = build.settings
    code = build.method.code_digest()
    return {
        **({"method_code": code} if code else {}),
        "settings": json.loads(settings_json(settings)),
        "calibration_data": calibration_digest(settings.calibration, build.recipe_dir) if settings.calibration else None,
        "base_model": {"id": build.entry.id, "source": build.entry.source,
                       "revision": source_revision(build.entry, build.recipe_dir)},
        "libraries": library_versions(BASE_LIBRARIES + build.method.libraries),
        **({"finetune_data": finetune_data_digest(settings.finetune, build.recipe_dir)} if settings.finetune else {}),
    }


def finetune_data_digest(ft, recipe_dir: Path) -> str:
    """The training data: a local file's (or the bundled demo set's) content; the Hub dataset's id."""
    import hashlib

    if ft.data.source == "alpaca":
        return f"hub:{ALPACA_HUB_ID}"
    path = DEMO_FILE if ft.data.source == "demo" else recipe_dir / ft.data.path
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def evaluation_fingerprint(build) -> str:
    plan = EvalPlan.for_model(build.recipe.evaluation, build.entry.kind)
    return digest([build.fingerprint(), plan.key()])


def publish_fingerprint(build, evaluation: str | None = None) -> str:
    return digest([build.fingerprint(), evaluation or evaluation_fingerprint(build)])


def factory_metadata(build) -> dict:
    """The `factory` block of the card's front matter: enough for `plan` to say why a copy is stale."""
    inputs = build.fingerprint_inputs
    evaluation = evaluation_fingerprint(build)
    return {
        "fingerprint": publish_fingerprint(build, evaluation),
        "build_fingerprint": build.fingerprint(),
        "evaluation_fingerprint": evaluation,
        "recipe": build.recipe.name,
        "settings_digest": digest(inputs["settings"]),
        "calibration_digest": inputs["calibration_data"],
        "base_revision": inputs["base_model"]["revision"],
        "libraries": inputs["libraries"],
    }
