"""Model-free builds are the default of the data-free schemes (RTN, FP8 dynamic): the recipe's settings say
which path was taken (so the fingerprint does), `model_free: false` goes back to oneshot, and a LLaVA-Next
checkpoint built model-free keeps its vision tower, projector and LM head in 16 bits (the checkpoint's names,
not a loaded model's, are what is matched)."""

from __future__ import annotations

import json

import pytest

from conftest import local_model_recipe, reload_in_fresh_process
from factory.recipe import load_recipe
from factory.registry import get_method


@pytest.mark.parametrize("body, model_free", [
    ("method: rtn\nweights: {bits: 4, group_size: 32}", True),
    ("method: rtn\nweights: {bits: 8, group_size: 32}\nactivations: {bits: 8}", True),
    ("method: rtn\nweights: {bits: 4, group_size: 32}\nrtn: {model_free: false}", False),
    ("method: fp8-dynamic\nweights: {bits: 8}", True),
    ("method: fp8-dynamic\nweights: {bits: 8}\nfp8-dynamic: {model_free: false}", False),
    ("method: fp8-dynamic\nweights: {bits: 8}\nfp8-dynamic: {kv_cache: fp8}\n"
     "calibration: {source: demo, samples: 4, seq_len: 32}", False),
    ("method: fp8-block\nweights: {bits: 8}", False),
    ("method: fp8-block\nweights: {bits: 8}\nfp8-block: {model_free: true}", True),
])
def test_data_free_schemes_default_to_model_free(tmp_path, tiny_llama, body, model_free):
    # fp8-block's 128x128 blocks do not divide the tiny model: only the options are looked at here
    recipe = load_recipe(local_model_recipe(tmp_path, "mf", body, tiny_llama), check_model_configs=False)
    settings = recipe.effective(recipe.models[0])
    assert bool(settings.options["model_free"]) is model_free
    if recipe.method in ("rtn", "fp8-dynamic"):  # resolved in the settings: the fingerprint hashes the path taken
        assert settings.options["model_free"] is model_free
    method = get_method(recipe.method)
    assert method.runs_model_free(settings) is model_free
    assert ("model_free_ptq" in method.card_facts(settings).engine) is model_free


def test_model_free_default_changes_the_fingerprint(tmp_path, tiny_llama):
    from factory.pipeline.build import Build

    prints = {}
    for free in (True, False):
        body = f"method: rtn\nweights: {{bits: 4, group_size: 32}}\nrtn: {{model_free: {str(free).lower()}}}"
        recipe = load_recipe(local_model_recipe(tmp_path, f"mf-{str(free).lower()}", body, tiny_llama))
        prints[free] = Build(recipe, recipe.models[0], tmp_path).fingerprint()
    default = load_recipe(local_model_recipe(tmp_path, "mf-default", "method: rtn\nweights: {bits: 4, group_size: 32}",
                                             tiny_llama))
    assert prints[True] != prints[False]
    assert Build(default, default.models[0], tmp_path).fingerprint() == prints[True]


def test_llava_next_model_free_keeps_vision_and_head(tmp_path, tiny_llava):
    """The default RTN build of a LLaVA-Next checkpoint: only the language model's linear layers are packed,
    whatever prefix the checkpoint gives them; plain transformers reloads it and its logits are finite."""
    from safetensors import safe_open

    from factory.pipeline.build import Build
    from factory.stages.artifact import quantize

    recipe = load_recipe(local_model_recipe(tmp_path, "llava-mf", "method: rtn\nweights: {bits: 4, group_size: 32}",
                                            tiny_llava, kind="llava-next"))
    result = quantize(Build(recipe, recipe.models[0], tmp_path))
    assert result.record.get("model_free") is True
    names = []
    for path in result.output.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            names += list(f.keys())
    packed = {n.rsplit(".", 1)[0] for n in names if n.endswith(".weight_packed")}
    assert packed and all("layers." in n and ("self_attn" in n or "mlp" in n) for n in packed), sorted(packed)[:5]
    assert not any(k in n for n in packed for k in ("vision_tower", "multi_modal_projector", "lm_head", "embed"))
    assert any(n.endswith("lm_head.weight") for n in names)
    config = json.loads((result.output / "config.json").read_text())["quantization_config"]
    assert "lm_head" in config["ignore"]
    loaded = reload_in_fresh_process("llava-next", result.output)
    assert loaded["finite"] and not loaded["factory_imported"] and loaded["quant_method"] == "compressed-tensors"


@pytest.mark.parametrize("weights", ["{bits: 2, group_size: 32}", "{bits: 3, group_size: 32}",
                                     "{bits: 8, group_size: per-channel}\nactivations: {bits: 8}"])
def test_every_rtn_grid_builds_model_free_and_reloads(tmp_path, tiny_llama, weights):
    from factory.pipeline.build import Build
    from factory.stages.artifact import quantize

    recipe = load_recipe(local_model_recipe(tmp_path, "rtn-mf", f"method: rtn\nweights: {weights}", tiny_llama))
    result = quantize(Build(recipe, recipe.models[0], tmp_path))
    assert result.record.get("model_free") is True
    (group,) = json.loads((result.output / "config.json").read_text())["quantization_config"]["config_groups"].values()
    assert group["weights"]["num_bits"] == recipe.weights.bits
    assert (group["input_activations"] or {}).get("dynamic", None) is (True if recipe.activations else None)
    loaded = reload_in_fresh_process("causal-lm", result.output)
    assert loaded["finite"] and not loaded["factory_imported"]
