"""Every shipped recipe's build fingerprints, offline: `python bench/fingerprints.py > after.json`.

For checking a refactor against issue 23's rule (a recipe whose computation did not change keeps
its fingerprint): run it before and after and diff the two. `factory plan --format json` says the
same but needs the Hub for recipes that pin a branch (revision: main); here such a revision is taken
as written, which is the same on both sides of the comparison.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from factory.engines import base_models  # noqa: E402
from factory.pipeline.build import Build  # noqa: E402
from factory.recipe import load_recipe  # noqa: E402


def main() -> int:
    base_models.resolve_hub_revision = lambda model_id, revision: revision  # offline: the revision as written
    out = {}
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        recipe = load_recipe(path, check_model_configs=False)
        for entry in recipe.models:
            out[f"{path.name} {entry.id}"] = Build(recipe, entry, Path("/nonexistent")).fingerprint()
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
