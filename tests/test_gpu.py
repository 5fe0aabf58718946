"""The GPU tier (`pytest -m gpu`; bench/gpu_check.sh runs it): every method on tiny random Llama and
LLaVA-Next models on CUDA, bitsandbytes NF4/INT8 on CUDA, the evaluation with the hf backend on CUDA
and the speed measurement on CUDA. Skipped where there is no CUDA device (conftest.py)."""

from __future__ import annotations

import json

import pytest

from conftest import local_model_recipe
from factory.core.errors import RecipeInvalid
from factory.pipeline.build import Build
from factory.recipe import load_recipe

CAL = "calibration: {source: demo, samples: 8, seq_len: 64}"
FINETUNE = ("finetune: {data: {source: demo}, lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj]}, "
            "max_steps: 2, batch_size: 1, max_seq_len: 32, save_steps: 1}")
# One recipe body per registered method (test_every_method_has_a_gpu_recipe keeps this complete).
METHODS = {
    "rtn": "method: rtn\nweights: {bits: 4, group_size: 32}",
    "gptq": f"method: gptq\nweights: {{bits: 4, group_size: 32}}\n{CAL}",
    "awq": f"method: awq\nweights: {{bits: 4, group_size: 32}}\n{CAL}",
    "smoothquant": f"method: smoothquant\nweights: {{bits: 8}}\nactivations: {{bits: 8}}\n{CAL}",
    "nf4": "method: nf4\nweights: {bits: 4}",
    "int8": "method: int8\nweights: {bits: 8}",
    "pb-llm": f"method: pb-llm\nweights: {{bits: 2}}\npb-llm: {{salient_fraction: 0.1}}\n{CAL}",
    "billm": f"method: billm\nweights: {{bits: 1}}\n{CAL}",
    "slim-llm": f"method: slim-llm\nweights: {{bits: 2}}\n{CAL}",
    "quip": f"method: quip\nweights: {{bits: 2}}\n{CAL}",
    "spinquant-gptq": f"method: spinquant-gptq\nweights: {{bits: 2}}\n{CAL}",
    "autoround": f"method: autoround\nweights: {{bits: 4, group_size: 32}}\nautoround: {{iters: 2}}\n{CAL}",
    "gguf": "method: gguf\nweights: {bits: 8}\ngguf: {type: Q8_0}",
    "qlora": f"method: qlora\nweights: {{bits: 4}}\n{FINETUNE}",
    "ir-qlora": f"method: ir-qlora\nweights: {{bits: 4}}\n{FINETUNE}",
    "db-llm": "method: db-llm\nweights: {bits: 2, group_size: 32}\n"
              "db-llm: {steps: 2, samples: 4, seq_len: 16, batch_size: 2}",
    "fp8-dynamic": "method: fp8-dynamic\nweights: {bits: 8}",
    "fp8": f"method: fp8\nweights: {{bits: 8}}\n{CAL}",
    "nvfp4": f"method: nvfp4\nweights: {{bits: 4}}\n{CAL}",
    "nvfp4a16": "method: nvfp4a16\nweights: {bits: 4}",
    "mxfp4": "method: mxfp4\nweights: {bits: 4}",
    "mxfp4a16": "method: mxfp4a16\nweights: {bits: 4}",
    "mixed": "method: mixed\nweights: {bits: 4, group_size: 32}\n"
             "mixed:\n  groups:\n    - targets: ['re:.*self_attn\\..*']\n      bits: 8\n      group_size: 32\n",
    "autoscheme": f"method: autoscheme\nweights: {{bits: 8, group_size: 32}}\nautoscheme: {{avg_bits: 5.0}}\n{CAL}",
}
# Formats whose blocks or groups (128) do not divide the tiny models' 64-wide layers: built and reloaded on
# a 128-wide tiny Llama on CPU (tests/test_float_formats.py); not in this tier yet.
NOT_IN_TIER = {"fp8-block": "128x128 weight blocks", "w4afp8": "INT4 groups of 128"}
# GGUF files are written on the CPU (auto-round's writer) and run by llama.cpp: nothing of theirs runs on CUDA here.
CPU_ONLY = {"gguf": "the GGUF writer runs on the CPU; llama.cpp, not this tier, runs the file"}
SPEED = "evaluation:\n  speed: {batch_sizes: [1, 4], prompt_tokens: 32, new_tokens: 8}\n"


def test_every_method_has_a_gpu_recipe():
    """Not a GPU test: a method added to the registry without a GPU-tier recipe fails here, on CPU too."""
    from factory.registry import method_names

    assert set(method_names()) - {"toy"} <= set(METHODS) | set(NOT_IN_TIER), \
        set(method_names()) - set(METHODS) - set(NOT_IN_TIER)


def test_gpu_recipes_are_valid(tmp_path, tiny_llama):
    """Not a GPU test either: each GPU-tier recipe passes validation here, so the tier fails only on CUDA problems."""
    for name, body in METHODS.items():
        load_recipe(local_model_recipe(tmp_path, name.replace("-", ""), body, tiny_llama))


def _reload_on_cuda(kind: str, path) -> dict:
    import torch

    from factory.engines.loading import model_class

    model = model_class(kind).from_pretrained(path, device_map="cuda").eval()
    ids = torch.arange(1, 33, device="cuda").unsqueeze(0)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    devices = {p.device.type for p in model.parameters()}
    del model
    torch.cuda.empty_cache()
    return {"finite": bool(torch.isfinite(logits).all()), "devices": devices}


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["causal-lm", "llava-next"])
@pytest.mark.parametrize("name", list(METHODS))
def test_method_quantizes_on_cuda(name, kind, tmp_path, tiny_llama, tiny_llava):
    import torch

    from factory.stages.artifact import build_artifact

    if name in CPU_ONLY:
        pytest.skip(CPU_ONLY[name])
    model = tiny_llama if kind == "causal-lm" else tiny_llava
    try:
        recipe = load_recipe(local_model_recipe(tmp_path, name.replace("-", ""), METHODS[name], model, kind))
    except RecipeInvalid as exc:  # a method that refuses this kind says so in the recipe check
        pytest.skip(f"{name} refuses {kind}: {exc.problems[0]}")
    build = Build(recipe, recipe.models[0], tmp_path / "work")
    result = build_artifact(build)  # quantize, or finetune for the LoRA methods
    assert result.record.get("device") == "cuda", result.record
    assert result.record.get("peak_gpu_mb"), "a CUDA run records its peak GPU memory"
    if build.method.artifact_kind == "adapter":  # base + adapter, as a user loads it
        loaded = build.artifact.load(kind, device_map="cuda").eval()
        with torch.no_grad():
            logits = loaded(input_ids=torch.arange(1, 33, device="cuda").unsqueeze(0)).logits.float()
        assert torch.isfinite(logits).all()
        return
    reloaded = _reload_on_cuda(kind, build.model_dir)
    assert reloaded["finite"] and reloaded["devices"] == {"cuda"}


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["nf4", "int8"])
def test_bitsandbytes_stays_packed_on_cuda(name, tmp_path, tiny_llama):
    from factory.stages.artifact import quantize
    from factory.stages.speed import SPEED_FILE, speed

    recipe = load_recipe(local_model_recipe(tmp_path, name, METHODS[name] + "\n" + SPEED, tiny_llama))
    build = Build(recipe, recipe.models[0], tmp_path / "work")
    quantize(build)
    figures = json.loads((speed(build).output / SPEED_FILE).read_text())
    assert figures["runtime"] in ("transformers", "vllm") and "(CUDA)" in figures["device"]
    if figures["runtime"] == "transformers":
        assert figures["build"]["weights_in_memory"] == "packed"
        assert figures["build"]["weights_mb"] < figures["base"]["weights_mb"]
    assert figures["build"]["peak_gpu_mb"] and all(b["decode_tokens_per_s"] for b in figures["build"]["batches"])


@pytest.mark.gpu
def test_speed_of_a_gptq_build_on_cuda(tmp_path, tiny_llama):
    from factory.stages.artifact import quantize
    from factory.stages.speed import SPEED_FILE, speed

    recipe = load_recipe(local_model_recipe(tmp_path, "gptq", METHODS["gptq"] + "\n" + SPEED, tiny_llama))
    build = Build(recipe, recipe.models[0], tmp_path / "work")
    quantize(build)
    figures = json.loads((speed(build).output / SPEED_FILE).read_text())
    assert "(CUDA)" in figures["device"]
    for who in ("build", "base"):
        assert figures[who]["peak_gpu_mb"] > 0
        assert [b["batch_size"] for b in figures[who]["batches"]] == [1, 4]
        assert all(b["prefill_tokens_per_s"] > 0 and b["decode_tokens_per_s"] > 0 for b in figures[who]["batches"])
    if figures["runtime"] == "transformers":  # what the issue measured on an H100: decompressed to dense
        assert figures["build"]["weights_in_memory"] == "dense" and "decompresses" in figures["weights_note"]


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["causal-lm", "llava-next"])
def test_hf_evaluation_on_cuda(kind, tmp_path, tiny_llama, tiny_llava):
    from factory.stages.artifact import quantize
    from factory.stages.evaluate import evaluate

    model = tiny_llama if kind == "causal-lm" else tiny_llava
    body = METHODS["rtn"] + "\nevaluation: {suite: smoke, backend: hf, limit: 4, perplexity_seq_len: 64}\n"
    recipe = load_recipe(local_model_recipe(tmp_path, "rtn", body, model, kind))
    build = Build(recipe, recipe.models[0], tmp_path / "work")
    quantize(build)
    result = evaluate(build, log=lambda line: None)
    harness = result.scores["harness"]
    assert harness["device"] == "cuda" and harness["backend"] == "hf"
    assert "one GPU" in harness["placement"]
    assert result.scores["tasks"], "the smoke tasks were scored"
