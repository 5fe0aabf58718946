"""SmoothQuant at W8A8, W6A6 and W4A4 (llm-compressor): the activation scheme is written into the
checkpoint and plain transformers applies it on load (the same weights without it give other logits);
the card says which rows vLLM serves."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import local_model_recipe
from factory.pipeline.build import Build
from factory.recipe import load_recipe
from factory.registry import get_method
from factory.stages.artifact import quantize

CAL = "calibration: {source: demo, samples: 4, seq_len: 64}"
LOGITS = """
import json, sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
with torch.no_grad():
    print(json.dumps(model(input_ids=torch.arange(1, 33).unsqueeze(0)).logits[0].tolist()))
"""


def _logits(path) -> torch.Tensor:
    done = subprocess.run([sys.executable, "-c", LOGITS, str(path)], capture_output=True, text=True, timeout=600,
                          cwd="/")
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))


def test_w4a4_keeps_its_activation_quantization_when_transformers_loads_it(tmp_path, tiny_llama):
    body = f"method: smoothquant\nweights: {{bits: 4}}\nactivations: {{bits: 4}}\n{CAL}"
    recipe = load_recipe(local_model_recipe(tmp_path, "smoothquant-w4a4", body, tiny_llama))
    build = Build(recipe, recipe.models[0], tmp_path)
    assert build.settings.scheme_label == "W4A4"
    output = quantize(build).output
    config = json.loads((output / "config.json").read_text())
    group = config["quantization_config"]["config_groups"]["group_0"]
    assert group["weights"]["num_bits"] == 4 and group["weights"]["strategy"] == "channel"
    act = group["input_activations"]
    assert (act["num_bits"], act["strategy"], act["dynamic"], act["type"]) == (4, "token", True, "int")

    # the same stored weights with the activation scheme taken out of the config: W4A16
    weights_only = tmp_path / "weights-only"
    shutil.copytree(output, weights_only)
    config["quantization_config"]["config_groups"]["group_0"]["input_activations"] = None
    (weights_only / "config.json").write_text(json.dumps(config))
    base, w4a4, w4a16 = _logits(tiny_llama), _logits(output), _logits(weights_only)
    assert torch.isfinite(w4a4).all()
    # loading applied the int4 per-token activations: other logits than the weights alone, further from the
    # base (on the real SmolLM2 the gap is perplexity-sized: bench/lowbit_cpu.py, README)
    assert not torch.allclose(w4a4, w4a16, atol=1e-2)
    assert (w4a4 - base).norm() > (w4a16 - base).norm(), ((w4a4 - base).norm(), (w4a16 - base).norm())


@pytest.mark.parametrize("bits, served", [(8, True), (6, False), (4, False)])
def test_card_says_which_rows_vllm_serves(tmp_path, tiny_llama, bits, served):
    body = f"method: smoothquant\nweights: {{bits: {bits}}}\nactivations: {{bits: {bits}}}\n{CAL}"
    recipe = load_recipe(local_model_recipe(tmp_path, f"sq{bits}", body, tiny_llama))
    settings = recipe.effective(recipe.models[0])
    note = get_method("smoothquant").card_facts(settings).serve_note
    assert ("vllm serve" in note) == served
    if not served:
        assert note.startswith("Evaluation only") and f"int{bits} activations" in note
