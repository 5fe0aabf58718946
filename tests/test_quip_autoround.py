"""spinquant-gptq (Hadamard rotations folded offline + GPTQ; not QuIP, see test_quip.py) and AutoRound
through llm-compressor, on tiny Llama.

The spinquant-gptq test proves what the method chooses: the rotations are folded into the weights, so plain
transformers reloads a model whose logits equal the in-memory model's before saving (llm-compressor's
QuIPModifier keeps online rotation weights that transformers 5.17 drops, and its logits come back wrong).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import write_recipe
from factory.pipeline.build import Build
from factory.recipe import load_recipe
from factory.stages.artifact import quantize

CAL = "calibration: {source: demo, samples: 8, seq_len: 64}"
LOGITS = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
with torch.no_grad():
    print(json.dumps(model(input_ids=torch.arange(1, 33).unsqueeze(0)).logits[0].tolist()))
"""


def _build(tmp_path, tiny_llama, name, body):
    recipe = load_recipe(write_recipe(tmp_path, f"name: {name}\n{body}\n"
                                      f"models: [{{id: test/tiny, source: local, path: {tiny_llama}}}]\n"))
    return Build(recipe, recipe.models[0], tmp_path)


def test_spinquant_gptq_rotations_survive_a_plain_reload(tmp_path, tiny_llama, monkeypatch):
    import llmcompressor

    before = {}
    real_oneshot = llmcompressor.oneshot

    def oneshot(*args, **kwargs):  # the quantized model in memory, before it is saved
        result = real_oneshot(*args, **kwargs)
        model = kwargs["model"]
        with torch.no_grad():
            before["logits"] = model(input_ids=torch.arange(1, 33).unsqueeze(0)).logits[0].float().clone()
        return result

    monkeypatch.setattr(llmcompressor, "oneshot", oneshot)
    build = _build(tmp_path, tiny_llama, "spinquant-gptq-2bit", f"method: spinquant-gptq\nweights: {{bits: 2}}\n{CAL}")
    result = quantize(build)
    monkeypatch.undo()
    config = json.loads((result.output / "config.json").read_text())
    assert config["quantization_config"]["config_groups"]["group_0"]["weights"]["strategy"] == "channel"
    assert config["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] == 2

    done = subprocess.run([sys.executable, "-c", LOGITS, str(result.output)], capture_output=True, text=True,
                          timeout=600, cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    after = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
    # bf16 storage of the fake-quantized model vs. its packed reload: the same model up to rounding
    assert torch.allclose(before["logits"], after, atol=0.05, rtol=0.02), (before["logits"] - after).abs().max()
    # and the rotations were folded in: the 2-bit weights are not the base's
    base_logits = subprocess.run([sys.executable, "-c", LOGITS, str(tiny_llama)], capture_output=True, text=True,
                                 timeout=600, cwd="/")
    assert not torch.allclose(torch.tensor(json.loads(base_logits.stdout.strip().splitlines()[-1])), after)


def test_autoround_builds_compressed_tensors(tmp_path, tiny_llama):
    build = _build(tmp_path, tiny_llama, "autoround-4bit",
                   f"method: autoround\nweights: {{bits: 4, group_size: 32}}\nautoround: {{iters: 2}}\n{CAL}")
    result = quantize(build)
    config = json.loads((result.output / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert result.record.compute_dtype == "bfloat16"
    assert "auto-round" in build.fingerprint_inputs["libraries"]


@pytest.mark.parametrize("body, line", [
    ("method: spinquant-gptq\nweights: {bits: 8}", ":3: weights.bits: spinquant-gptq supports 2, 3, 4 bits, not 8"),
    ("method: autoround\nweights: {bits: 1}", ":3: weights.bits: autoround supports 2, 3, 4 bits, not 1"),
])
def test_bad_bits_are_one_line(tmp_path, body, line):
    from conftest import run_factory

    recipe = write_recipe(tmp_path, f"name: bad\n{body}\nmodels: [{{id: a/b}}]\n")
    done = run_factory("validate", str(recipe))
    assert done.returncode == 2 and done.stderr.strip() == f"{recipe}{line}"


@pytest.mark.parametrize("method", ["spinquant-gptq", "autoround"])
def test_llava_next_is_refused_in_one_line(tmp_path, method):
    """Both fail inside llm-compressor 0.14 on LLaVA-Next (head_dim read from the top-level config)."""
    from conftest import run_factory

    recipe = write_recipe(tmp_path, f"name: bad\nmethod: {method}\nweights: {{bits: 4}}\n"
                                    "models: [{id: a/b, kind: llava-next}]\n")
    done = run_factory("validate", str(recipe))
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"{recipe}:4: models[0].kind: {method} cannot build llava-next models: ")
