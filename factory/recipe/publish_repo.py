"""The Hub repo id a build is published as: the recipe's `publish.repo` template, filled in and checked."""

from __future__ import annotations

from factory.recipe.fields import PER_CHANNEL, PER_TENSOR
from factory.recipe.naming import REPO_TEMPLATE_FIELDS, hub_repo_id_problem
from factory.recipe.schema import ModelEntry, Recipe


def repo_id(recipe: Recipe, entry: ModelEntry, org: str) -> str:
    """The Hub repo id a build is published as: the recipe's `publish.repo` template filled in."""
    s = recipe.effective(entry)
    group = {PER_CHANNEL: "channel", PER_TENSOR: "tensor"}.get(s.group_size, str(s.group_size))
    values = {"org": org, "model": entry.id.split("/")[-1], "recipe": recipe.name, "method": s.method,
              "METHOD": s.method.upper(), "bits": str(s.bits), "group": group, "scheme": s.scheme_label}
    return recipe.publish.repo.format_map(values)


def repo_id_problem(recipe: Recipe, entry: ModelEntry, org: str) -> str | None:
    """Why the Hub would refuse this build's repo id, or None."""
    try:
        name = repo_id(recipe, entry, org)
    except (KeyError, ValueError, IndexError) as exc:
        fields = ", ".join("{%s}" % f for f in REPO_TEMPLATE_FIELDS)
        return f"template {recipe.publish.repo!r} is not valid ({type(exc).__name__}: {exc}); fields: {fields}"
    return hub_repo_id_problem(name)
