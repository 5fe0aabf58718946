"""Mixed precision by layer groups (method mixed): schemes by regex over module names, checked against the
model's layers in validate, and what each group was given reported in the manifest (and so the card)."""

from __future__ import annotations

import json

import pytest

from conftest import local_model_recipe, reload_in_fresh_process
from factory.cli import main
from factory.recipe import load_recipe

GROUPS = """mixed:
  groups:
    - targets: ['re:.*self_attn\\..*']
      bits: 8
      group_size: 32
    - targets: ['re:.*layers\\.(0|1)\\.mlp\\.down_proj$']
      bits: 8
      group_size: 32
"""


def test_groups_get_their_schemes_and_the_card_says_so(tmp_path, tiny_llama):
    from factory.pipeline.build import Build
    from factory.stages.artifact import quantize

    body = f"method: mixed\nweights: {{bits: 4, group_size: 32}}\n{GROUPS}"
    recipe = load_recipe(local_model_recipe(tmp_path, "mixed", body, tiny_llama))
    result = quantize(Build(recipe, recipe.models[0], tmp_path))
    config = json.loads((result.output / "config.json").read_text())["quantization_config"]
    bits = {tuple(g["targets"]): g["weights"]["num_bits"] for g in config["config_groups"].values()}
    assert bits == {("re:.*self_attn\\..*",): 8, ("re:.*layers\\.(0|1)\\.mlp\\.down_proj$",): 8, ("Linear",): 4}
    rows = result.record.layer_groups
    assert [(r["scheme"], r["layers"]) for r in rows] == [("W8A16-g32", 8), ("W8A16-g32", 2), ("W4A16-g32", 4)]
    # 2 layers: attention 4 x 64x64 (q, o) + 2 x 32x64 (k, v) per layer; MLP 3 x 64x128
    attention, mlp = 2 * (2 * 64 * 64 + 2 * 32 * 64), 2 * 3 * 64 * 128
    eight = attention + 2 * 64 * 128
    expected = (eight * (8 + 16 / 32) + (mlp - 2 * 64 * 128) * (4 + 16 / 32)) / (attention + mlp)
    assert result.record.bits_per_weight == pytest.approx(expected, abs=1e-3)
    reloaded = reload_in_fresh_process("causal-lm", result.output)
    assert reloaded["finite"] and not reloaded["factory_imported"]


@pytest.mark.parametrize("groups, field, message", [
    ("    - targets: ['re:.*layers\\.7\\..*']\n      bits: 8\n", "mixed.groups[0].targets[0]",
     "matches no linear layer of test/tiny"),
    ("    - targets: ['re:.*self_attn\\..*']\n      bits: 8\n    - targets: ['re:.*layers\\.0\\..*']\n      bits: 4\n",
     "mixed.groups[1].targets", "model.layers.0.self_attn.q_proj of test/tiny is claimed by groups 0 and 1"),
    ("    - targets: [model.layers.0.mlp.up_proj]\n      bits: 5\n", "mixed.groups[0].bits", "must be one of 2, 3, 4, 8"),
])
def test_bad_groups_are_one_line(tmp_path, tiny_llama, capsys, groups, field, message):
    body = f"method: mixed\nweights: {{bits: 4, group_size: 32}}\nmixed:\n  groups:\n{groups}"
    path = local_model_recipe(tmp_path, "bad", body, tiny_llama)
    assert main(["validate", str(path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{path}:") and f": {field}: " in line and message in line, line
