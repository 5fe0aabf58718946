"""Loading a recipe file: parse the YAML, validate it with pydantic (unknown keys rejected), then check
what pydantic cannot see (factory.recipe.checks). Every problem is reported as `file:line: field: message`.

The recipe model is the schema's `Recipe` plus one optional options block per registered method
(`gptq: {dampening_frac: 0.01}`), taken from the registry.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, create_model

from factory.core.errors import RecipeInvalid
from factory.core.safe_yaml import YamlRejected, load_yaml_document, read_recipe_text
from factory.recipe.checks import check_recipe
from factory.recipe.schema import Recipe, block_field
from factory.registry import get_method, method_names, registry_version


def recipe_model() -> type[Recipe]:
    """Recipe plus one optional options block per registered method that has options."""
    return _recipe_model(registry_version())


@functools.cache
def _recipe_model(version: int) -> type[Recipe]:
    blocks = {}
    for name in method_names():
        options = get_method(name).Options
        if options is not None:
            blocks[block_field(name)] = (options | None, Field(None, alias=name, description=f"Options of method {name}."))
    return create_model("Recipe", __base__=Recipe, **blocks)


def recipe_json_schema() -> dict[str, Any]:
    schema = recipe_model().model_json_schema(by_alias=True)
    schema["properties"]["method"]["enum"] = method_names()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "factory recipe"
    return schema


def load_recipe(path: str | Path, check_model_configs: bool = True) -> Recipe:
    """Parse and validate one recipe file; raise RecipeInvalid listing every problem."""
    path = Path(path)
    shown = str(path)
    if not path.is_file():
        raise RecipeInvalid([f"{shown}: no such recipe file"])
    try:
        # Bounded and strict: no anchors/aliases, no duplicate keys, no tags, limited size and depth.
        data, lines = load_yaml_document(read_recipe_text(path, shown), shown)
    except YamlRejected as exc:
        raise RecipeInvalid([str(exc)]) from None
    if not isinstance(data, dict):
        raise RecipeInvalid([f"{shown}:1: a recipe is a YAML mapping (name: ..., method: ..., models: [...])"])

    def where(loc: tuple) -> str:
        # The deepest part of the path that exists in the file gives the line.
        for cut in range(len(loc), -1, -1):
            if loc[:cut] in lines:
                return f"{shown}:{lines[loc[:cut]]}"
        return shown

    try:
        recipe = recipe_model().model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            # Union members add their type name to the path; drop those for readability.
            loc = tuple(p for p in loc if not (isinstance(p, str) and (p in ("int", "str", "bool") or p.startswith("literal["))))
            problems.append(f"{where(loc)}: {_dotted(loc) or '(top level)'}: {_message(err)}")
        raise RecipeInvalid(problems) from None

    recipe._source_path = path
    problems = [f"{where(loc)}: {_dotted(loc)}: {msg}" for loc, msg in check_recipe(recipe, path.parent, check_model_configs)]
    if problems:
        raise RecipeInvalid(problems)
    return recipe


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(err: dict) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return msg.replace("Input should be", "must be one of:").replace("must be one of: 8", "must be 8")
    wanted = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
              "string_type": "a string"}.get(kind)
    if wanted is not None:  # strict types: say what was given instead
        given = err.get("input")
        shown = repr(given) if isinstance(given, (str, int, float, bool)) else type(given).__name__
        what = {str: "the string", bool: "the boolean", int: "the integer", float: "the number"}.get(type(given), "")
        hint = " (put it in quotes)" if kind == "string_type" and isinstance(given, (int, float, bool)) else ""
        return f"must be {wanted}, not {what + ' ' if what else ''}{shown}{hint}".replace("  ", " ")
    msg = msg.removeprefix("Value error, ").replace("Input should be", "must be").replace("String should", "must")
    msg = msg.replace("List should", "must")
    return msg[0].lower() + msg[1:] if msg else msg
