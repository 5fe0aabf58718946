"""auto-round's AutoScheme (method autoscheme) on a tiny random Llama, on the CPU: a target average of bits per
weight, a scheme chosen per layer among the candidates, the choice in the manifest (one row per scheme, and each
layer's), the bits per weight the checkpoint stores, a reload in plain transformers; bad values are one line."""

from __future__ import annotations

import json

import pytest

from conftest import local_model_recipe, reload_in_fresh_process
from factory.cli import main
from factory.recipe import load_recipe

CAL = "calibration: {source: demo, samples: 8, seq_len: 64, seed: 2}\n"


def test_autoscheme_chooses_per_layer_under_the_target(tmp_path, tiny_llama):
    from factory.pipeline.build import Build
    from factory.stages.artifact import quantize

    body = f"method: autoscheme\nweights: {{bits: 8, group_size: 32}}\nautoscheme: {{avg_bits: 5.0, candidates: [2, 4, 8]}}\n{CAL}"
    recipe = load_recipe(local_model_recipe(tmp_path, "auto", body, tiny_llama))
    build = Build(recipe, recipe.models[0], tmp_path)
    result = quantize(build)
    record = result.record
    schemes = record.layer_schemes
    assert len(schemes) == 14 and set(schemes.values()) <= {2, 4, 8}  # 2 layers x 7 linears; lm_head kept
    assert sum(r["layers"] for r in record.layer_groups) == 14
    assert [r["scheme"] for r in record.layer_groups] == [f"W{b}A16-g32" for b in sorted(set(schemes.values()))]
    # auto-round keeps its own count (a zero point per group) at or under the target
    assert record.auto_round_avg_bits <= 5.0 + 1e-3
    config = json.loads((result.output / "config.json").read_text())["quantization_config"]
    saved = {t: g["weights"]["num_bits"] for g in config["config_groups"].values() for t in g["targets"]}
    assert saved == schemes and "lm_head" in config["ignore"]
    # what the checkpoint stores: packed weights and one bf16 scale per 32 weights, symmetric (no zero point)
    attention = {"q_proj": 64 * 64, "k_proj": 32 * 64, "v_proj": 32 * 64, "o_proj": 64 * 64}
    size = {n: attention.get(n.rsplit(".", 1)[1], 64 * 128) for n in schemes}
    expected = sum(size[n] * (b + 16 / 32) for n, b in schemes.items()) / sum(size.values())
    assert record.bits_per_weight == pytest.approx(expected, abs=1e-3)
    from factory.stages.card import render
    from report_fakes import scores_for

    scores = scores_for({"wikitext2_ppl": (10.0, 11.0)}, smoke=True)  # the card's figures; not what is checked here
    scores["harness"].update(harness_version="0", backend="hf", dtype="float32", batch_size=1, num_fewshot=0, seed=0,
                             device="cpu", limit=None, perplexity=False)
    text = render(build, "tester/tiny-auto", scores, [])
    assert f"{record.bits_per_weight} bits per weight in all" in text and "auto-round AutoScheme (target 5" in text
    for row in record.layer_groups:
        assert f"| {row['scheme']}: {row['layers']} layers, {row['weights']:,} weights |" in text
    reloaded = reload_in_fresh_process("causal-lm", result.output)
    assert reloaded["finite"] and not reloaded["factory_imported"]


@pytest.mark.parametrize("block, field, message", [
    ("autoscheme: {avg_bits: 9.0}", "autoscheme.avg_bits",
     "9 is outside what the candidates give: 2.562 (all W2) to 8.750 (all W8) bits per weight at group size 32"),
    ("autoscheme: {avg_bits: 4.0, candidates: [2, 5, 8]}", "autoscheme.candidates", "each of 2, 3, 4, 8, once"),
    ("autoscheme: {avg_bits: 3.0, candidates: [2, 4]}", "weights.bits", "must be the widest candidate (4)"),
    ("autoscheme: {candidates: [2, 8]}", "autoscheme.avg_bits", "autoscheme needs a target"),
    ("", "method", "autoscheme needs a target"),
    ("autoscheme: {avg_bits: 0.5}", "autoscheme.avg_bits", "greater than 1"),
])
def test_bad_autoscheme_values_are_one_line(tmp_path, tiny_llama, capsys, block, field, message):
    body = f"method: autoscheme\nweights: {{bits: 8, group_size: 32}}\n{block}\n{CAL}"
    path = local_model_recipe(tmp_path, "bad", body, tiny_llama)
    assert main(["validate", str(path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{path}:") and f": {field}: " in line and message in line, line
