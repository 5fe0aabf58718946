"""Each method on tiny random models: a checkpoint that plain transformers reloads in a fresh process."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from conftest import local_model_recipe, reload_in_fresh_process, run_factory, write_recipe
from factory.pipeline.build import Build
from factory.recipe import load_recipe
from factory.stages.artifact import quantize

CAL = "calibration: {source: demo, samples: 8, seq_len: 64}"
METHODS = {
    "rtn-4bit": "method: rtn\nweights: {bits: 4, group_size: 32}",
    "rtn-3bit-per-channel": "method: rtn\nweights: {bits: 3, group_size: per-channel}",
    "gptq-4bit": f"method: gptq\nweights: {{bits: 4, group_size: 32}}\n{CAL}",
    "gptq-2bit": f"method: gptq\nweights: {{bits: 2, group_size: 32}}\n{CAL}",
    "gptq-w8a8": f"method: gptq\nweights: {{bits: 8, group_size: per-channel}}\nactivations: {{bits: 8}}\n{CAL}",
    "awq-4bit": f"method: awq\nweights: {{bits: 4, group_size: 32}}\n{CAL}",
    "smoothquant-w8a8": f"method: smoothquant\nweights: {{bits: 8}}\nactivations: {{bits: 8}}\n{CAL}",
    "nf4": "method: nf4\nweights: {bits: 4}",
    "int8": "method: int8\nweights: {bits: 8}",
}
EXPECTED_FORMAT = {"nf4": "bitsandbytes", "int8": "bitsandbytes"}


@pytest.mark.parametrize("name", METHODS)
def test_method_produces_a_checkpoint_plain_transformers_reloads(name, tmp_path, tiny_llama):
    recipe = load_recipe(local_model_recipe(tmp_path, name, METHODS[name], tiny_llama))
    result = quantize(Build(recipe, recipe.models[0], tmp_path))
    model_dir = result.output
    assert model_dir == tmp_path / "builds" / name / "test--tiny" / "model"
    assert not list(model_dir.glob("*.bin")) and list(model_dir.glob("*.safetensors"))
    assert (model_dir / "tokenizer.json").is_file() and (model_dir / "factory_recipe.yaml").is_file()

    config = json.loads((model_dir / "config.json").read_text())["quantization_config"]
    if name in EXPECTED_FORMAT:
        assert config["quant_method"] == "bitsandbytes"
    else:
        assert config["quant_method"] == "compressed-tensors"
        group = config["config_groups"]["group_0"]
        assert group["weights"]["num_bits"] == recipe.weights.bits
        assert (group["input_activations"] is not None) == (recipe.activations is not None)
        # llm-compressor's own recipe travels with a oneshot build; a model-free one (rtn's default) has none
        assert (model_dir / "recipe.yaml").is_file() is (recipe.method != "rtn")

    manifest = json.loads((model_dir.parent / "manifest.json").read_text())
    stage = manifest["stages"]["quantize"]
    assert stage["status"] == "done" and stage["fingerprint"] == manifest["fingerprint"]
    assert stage["size_bytes"] < stage["base_size_bytes"] or name in ("gptq-w8a8", "smoothquant-w8a8", "int8")
    assert stage["wall_time_s"] > 0 and stage["peak_rss_mb"] > 0

    reloaded = reload_in_fresh_process("causal-lm", model_dir)
    assert reloaded["factory_imported"] is False
    assert reloaded["finite"] and reloaded["shape"][-1] == json.loads((tiny_llama / "config.json").read_text())["vocab_size"]


@pytest.mark.parametrize("name", ["gptq-4bit", "nf4"])
def test_llava_next_quantizes_language_model_only(name, tmp_path, tiny_llava):
    recipe = load_recipe(local_model_recipe(tmp_path, name, METHODS[name], tiny_llava, kind="llava-next"))
    model_dir = quantize(Build(recipe, recipe.models[0], tmp_path)).output
    assert (model_dir / "processor_config.json").is_file() or (model_dir / "preprocessor_config.json").is_file()

    with safe_open(str(next(model_dir.glob("*.safetensors"))), "pt") as f:
        keys = list(f.keys())
    vision = [k for k in keys if "vision_tower" in k or "multi_modal_projector" in k]
    assert vision and not [k for k in vision if k.endswith(("weight_packed", "weight_scale", ".absmax", ".quant_map"))]
    language = [k for k in keys if "language_model" in k and "q_proj" in k]
    marker = "weight_packed" if name == "gptq-4bit" else "absmax"
    assert any(marker in k for k in language), language

    reloaded = reload_in_fresh_process("llava-next", model_dir)
    assert reloaded["factory_imported"] is False and reloaded["finite"]


def test_cli_quantize_prints_a_summary_and_skips_a_finished_build(tmp_path, tiny_llama):
    recipe = local_model_recipe(tmp_path, "rtn-4bit", METHODS["rtn-4bit"], tiny_llama)
    first = run_factory("quantize", str(recipe), "--workdir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    out_dir = tmp_path / "builds" / "rtn-4bit" / "test--tiny" / "model"
    assert str(out_dir) in first.stdout and "smaller" in first.stdout and "peak RSS" in first.stdout
    second = run_factory("quantize", str(recipe), "--workdir", str(tmp_path))
    assert second.returncode == 0
    assert "skipped" in second.stdout and "(reused)" in second.stdout


def test_changing_a_setting_changes_the_fingerprint_and_rebuilds(tmp_path, tiny_llama):
    recipe = load_recipe(local_model_recipe(tmp_path, "rtn", METHODS["rtn-4bit"], tiny_llama))
    build = Build(recipe, recipe.models[0], tmp_path)
    assert quantize(build).skipped is False
    assert quantize(build).skipped is True
    changed = load_recipe(local_model_recipe(tmp_path, "rtn", "method: rtn\nweights: {bits: 4, group_size: 64}", tiny_llama))
    rebuilt = Build(changed, changed.models[0], tmp_path)
    assert rebuilt.fingerprint() != build.fingerprint()
    assert quantize(rebuilt).skipped is False


def test_calibration_does_not_enter_a_data_free_fingerprint(tmp_path, tiny_llama):
    a = load_recipe(local_model_recipe(tmp_path, "a", "method: rtn\nweights: {bits: 4, group_size: 32}", tiny_llama))
    b = load_recipe(local_model_recipe(tmp_path, "b", f"method: rtn\nweights: {{bits: 4, group_size: 32}}\n{CAL}", tiny_llama))
    assert Build(a, a.models[0], tmp_path).fingerprint() == Build(b, b.models[0], tmp_path).fingerprint()


def test_unknown_model_id_offline_is_one_line(tmp_path):
    recipe = write_recipe(tmp_path, """
        name: unknown-model
        method: rtn
        weights: {bits: 4}
        models: [{id: no-such-org/no-such-model-xyz}]
    """)
    done = run_factory("quantize", str(recipe), "--workdir", str(tmp_path))
    assert done.returncode == 2
    # The fingerprint pins the base model's commit, so `main` is resolved first: offline and not in
    # the local cache, that fails before any build folder exists.
    assert done.stderr.strip() == ("error: model no-such-org/no-such-model-xyz: revision 'main' is not in the local "
                                   "Hugging Face cache and the Hub is off (HF_HUB_OFFLINE); pin a commit or go online")
    assert not (tmp_path / "builds").exists()


def test_model_flag_picks_one_model_and_rejects_unknown(tmp_path, tiny_llama):
    recipe = local_model_recipe(tmp_path, "pick", METHODS["rtn-4bit"], tiny_llama)
    done = run_factory("quantize", str(recipe), "--model", "other/model", "--workdir", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip() == "error: recipe pick: no model 'other/model' (it lists: test/tiny)"


def test_calibration_text_too_short_is_one_line(tmp_path, tiny_llama):
    (tmp_path / "short.txt").write_text("just a few words")
    recipe = local_model_recipe(tmp_path, "short", "method: gptq\nweights: {bits: 4, group_size: 32}\n"
                     "calibration: {source: file, path: short.txt, samples: 4, seq_len: 64}", tiny_llama)
    done = run_factory("quantize", str(recipe), "--workdir", str(tmp_path))
    assert done.returncode == 2
    assert "fewer than calibration.seq_len (64)" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "builds/short/test--tiny/model").exists()
