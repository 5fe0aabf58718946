"""PB-LLM, BiLLM and SliM-LLM as factory methods: recipes validate (and say "simulated"), tiny Llama
and LLaVA-Next builds reload in plain transformers, the weights take only the values the method
allows, and bad options are one line each."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import local_model_recipe, reload_in_fresh_process, run_factory, write_recipe
from factory.pipeline.build import Build
from factory.recipe import load_recipe
from factory.stages.artifact import quantize

CAL = "calibration: {source: demo, samples: 4, seq_len: 64}"
METHODS = {
    "pb-llm-1.7bit": f"method: pb-llm\nweights: {{bits: 2}}\npb-llm: {{salient_fraction: 0.1}}\n{CAL}",
    "billm": f"method: billm\nweights: {{bits: 1}}\n{CAL}",
    "slim-llm-2bit": f"method: slim-llm\nweights: {{bits: 2}}\n{CAL}",
}


@pytest.mark.parametrize("name", METHODS)
def test_simulated_build_reloads_and_keeps_few_values(name, tmp_path, tiny_llama):
    recipe = load_recipe(local_model_recipe(tmp_path, name, METHODS[name], tiny_llama))
    build = Build(recipe, recipe.models[0], tmp_path)
    result = quantize(build)
    record = result.record
    assert record.format == "simulated" and record.engine == "factory.engines.lowbit"
    assert record.quantized_linears == 2 * 7  # every decoder linear of both layers, lm_head untouched
    assert 1.0 <= record.paper_bits <= 2.2 and record.effective_bits > record.paper_bits
    assert "method_code" in build.fingerprint_inputs  # our own code shapes the weights

    weights = load_file(str(result.output / "model.safetensors"))
    base = load_file(str(tiny_llama / "model.safetensors"))
    assert torch.equal(weights["lm_head.weight"], base["lm_head.weight"])
    down = weights["model.layers.1.mlp.down_proj.weight"].float()  # 64 x 128: one 128-column block
    limit = {"pb-llm-1.7bit": None, "billm": 8, "slim-llm-2bit": 8}[name]
    distinct = [torch.unique(row).numel() for row in down]
    if limit:
        assert max(distinct) <= limit, distinct  # BiLLM: salient +-a1+-a2 and 2 groups x +-; SliM-LLM: <= 3 bits
    else:
        # PB-LLM: in each row the binarized weights take two values (+-alpha); the salient 10% of the
        # block (chosen block-wide, so unevenly over rows) keep their own 8-bit values
        binarized = sum(torch.unique(row, return_counts=True)[1].topk(2).values.sum().item() for row in down)
        assert binarized / down.numel() >= 0.85
    reloaded = reload_in_fresh_process("causal-lm", result.output)
    assert reloaded["finite"] and not reloaded["factory_imported"] and reloaded["quant_method"] is None


def test_llava_next_text_tower_only(tmp_path, tiny_llava):
    recipe = load_recipe(local_model_recipe(tmp_path, "billm-llava", METHODS["billm"], tiny_llava, kind="llava-next"))
    result = quantize(Build(recipe, recipe.models[0], tmp_path))
    weights = load_file(str(result.output / "model.safetensors"))
    base = load_file(str(tiny_llava / "model.safetensors"))
    vision = [k for k in base if "vision_tower" in k or "multi_modal_projector" in k]
    assert vision and all(torch.equal(weights[k], base[k]) for k in vision)
    text = [k for k in base if "language_model" in k and k.endswith("proj.weight")]
    assert text and not any(torch.equal(weights[k], base[k]) for k in text)
    assert reload_in_fresh_process("llava-next", result.output)["finite"]


@pytest.mark.parametrize("body, line", [
    ("method: pb-llm\nweights: {bits: 2}\npb-llm: {salient_fraction: 0.6}",
     ":4: pb-llm.salient_fraction: must be in (0, 0.5], not 0.6"),
    ("method: pb-llm\nweights: {bits: 2}\npb-llm: {salient_fraction: 0.0}",
     ":4: pb-llm.salient_fraction: must be in (0, 0.5], not 0.0"),
    ("method: slim-llm\nweights: {bits: 1}",
     ":3: weights.bits: slim-llm averages groups of 0, 1 and 2 bits, which 1-8 bit groups cannot reach; use 2 to 7"),
    ("method: billm\nweights: {bits: 2}", ":3: weights.bits: billm supports 1 bits, not 2"),
    ("method: billm\nweights: {bits: 1, group_size: 64}",
     ":3: weights.group_size: the paper's setting: blocks of 128 columns"),
    ("method: db-llm\nweights: {bits: 2}\ndb-llm: {steps: 0}", ":4: db-llm.steps: must be greater than 0"),
    ("method: db-llm\nweights: {bits: 3}", ":3: weights.bits: db-llm supports 2 bits, not 3"),
    ("method: db-llm\nweights: {bits: 2}\ndb-llm: {data: calibration, samples: 8}",
     ":4: db-llm.samples: applies to data: generated (the calibration block sets the windows of data: calibration)"),
])
def test_bad_options_are_one_line(tmp_path, body, line):
    recipe = write_recipe(tmp_path, f"name: bad\n{body}\nmodels: [{{id: a/b}}]\n")
    done = run_factory("validate", str(recipe))
    assert done.returncode == 2
    assert done.stderr.strip() == f"{recipe}{line}"


def test_validate_says_simulated(tmp_path):
    from conftest import REPO

    done = run_factory("validate", str(REPO / "recipes" / "billm-1.1bit.yaml"))
    assert done.returncode == 0
    assert "simulated" in done.stdout and "full size" in done.stdout


def test_card_says_simulated_first(tmp_path, tiny_llama):
    from factory.core.hub import LocalFolder
    from factory.core.hub_files import card_metadata
    from factory.pipeline.publish import publish

    recipe = load_recipe(write_recipe(tmp_path, f"""
        name: billm-card
        {METHODS["billm"].replace(chr(10), chr(10) + "        ")}
        evaluation: {{suite: smoke, limit: 4, perplexity_seq_len: 64, batch_size: 4}}
        publish: {{org: tester}}
        models: [{{id: test/tiny, source: local, path: {tiny_llama}, license: mit}}]
    """))
    done = publish(Build(recipe, recipe.models[0], tmp_path), LocalFolder(tmp_path / "hub"), force=True, log=lambda *_: None)
    text = (tmp_path / "hub" / done.pushed.repo_id / "README.md").read_text()
    head = text.split("## Scores")[0]
    assert "Simulated quantization" in head and "full size" in head
    meta = card_metadata(text)
    assert "simulated-quantization" in meta["tags"] and "billm" in meta["tags"]
