"""Recipe validation: shipped recipes pass; each broken recipe gives its one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, run_factory, write_recipe
from factory.cli import main
from factory.core.errors import RecipeInvalid
from factory.recipe import load_recipe

BROKEN = sorted((Path(__file__).parent / "broken_recipes").glob("*.yaml"))
SHIPPED = sorted((REPO / "recipes").glob("*.yaml"))


def test_every_shipped_recipe_validates(capsys):
    assert main(["validate", *map(str, SHIPPED)]) == 0
    assert f"{len(SHIPPED)} recipes valid" in capsys.readouterr().out


def test_shipped_grid_covers_the_paper():
    names = {load_recipe(p).name for p in SHIPPED}
    grid = {f"{m}-{b}bit" for m in ("rtn", "gptq", "awq") for b in (2, 3, 4, 8)}
    assert grid | {"smoothquant-w8a8", "nf4", "demo-smollm2-gptq-4bit"} <= names
    for path in SHIPPED:
        recipe = load_recipe(path)
        if recipe.name in grid:
            assert recipe.weights.group_size == 128
            assert {m.id for m in recipe.models} == {"meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-70B",
                                                      "llava-hf/llama3-llava-next-8b-hf"}


def test_llava_keeps_vision_tower_and_projector_by_default():
    recipe = load_recipe(REPO / "recipes" / "gptq-4bit.yaml")
    llava = recipe.model("llava-hf/llama3-llava-next-8b-hf")[0]
    ignore = recipe.effective(llava).ignore
    assert "re:.*vision_tower.*" in ignore and "re:.*multi_modal_projector.*" in ignore
    llama = recipe.model("meta-llama/Meta-Llama-3-8B")[0]
    assert recipe.effective(llama).ignore == ["lm_head"]


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_recipe_gives_its_one_line(path, capsys):
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"{path}{expected}"]


def test_broken_recipes_through_the_real_cli_have_no_traceback():
    done = run_factory("validate", *map(str, BROKEN))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == len(BROKEN)


def test_every_command_validates_first(tmp_path):
    recipe = write_recipe(tmp_path, """
        name: bad
        method: nf4
        weights: {bits: 3}
        models: [{id: meta-llama/Meta-Llama-3-8B}]
    """)
    done = run_factory("quantize", str(recipe), "--workdir", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip() == f"{recipe}:3: weights.bits: nf4 supports 4 bits, not 3"
    assert not (tmp_path / "builds").exists()


def test_several_problems_are_all_reported(tmp_path):
    recipe = write_recipe(tmp_path, """
        name: several
        method: awq
        weights: {bits: 5, colour: red}
        calibration: {samples: -1}
        models: [{id: meta-llama/Meta-Llama-3-8B}]
    """)
    with pytest.raises(RecipeInvalid) as exc:
        load_recipe(recipe)
    assert exc.value.problems == [
        f"{recipe}:3: weights.colour: unknown field",
        f"{recipe}:4: calibration.samples: must be greater than 0",
    ]


def test_missing_recipe_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"{tmp_path / 'nope.yaml'}: no such recipe file"


def test_group_size_checked_against_a_local_config(tmp_path, tiny_llama):
    recipe = write_recipe(tmp_path, f"""
        name: local-group
        method: rtn
        weights: {{bits: 4, group_size: 48}}
        models: [{{id: test/tiny, source: local, path: {tiny_llama}}}]
    """)
    with pytest.raises(RecipeInvalid) as exc:
        load_recipe(recipe)
    assert exc.value.problems == [f"{recipe}:3: weights.group_size: 48 does not divide test/tiny's hidden_size (64)"]


def test_overrides_and_defaults_resolve(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, """
        name: o
        method: awq
        weights: {bits: 4}
        models:
          - {id: a/b}
          - {id: c/d, overrides: {group_size: 64, symmetric: true, ignore: [lm_head, "re:.*gate.*"]}}
    """))
    first, second = (recipe.effective(m) for m in recipe.models)
    assert (first.group_size, first.symmetric, first.ignore) == (128, False, ["lm_head"])
    assert (second.group_size, second.symmetric, second.ignore) == (64, True, ["lm_head", "re:.*gate.*"])
    assert first.scheme_label == "W4A16-g128"


def test_schema_command_prints_a_json_schema_that_rejects_unknown_keys(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False
    from factory.methods import method_names

    assert set(schema["properties"]["method"]["enum"]) == set(method_names()) >= {
        "rtn", "gptq", "awq", "smoothquant", "nf4", "int8", "pb-llm", "billm", "slim-llm"}
    assert "pb-llm" in schema["properties"] and "gptq" in schema["properties"]  # the methods' option blocks
    assert "models" in schema["required"]


HOSTILE = sorted((Path(__file__).parent / "hostile").glob("*.yaml"))


@pytest.mark.parametrize("path", HOSTILE, ids=[p.stem for p in HOSTILE])
def test_hostile_recipe_is_one_line_through_validate(path, capsys):
    """Aliases, duplicate keys, tags, odd keys: refused by `factory validate` in one line, exit 2."""
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"{path}{expected}"]
