"""The method registry: `factory methods`, a method added from outside (one class, one register
call), the README's generated table, and `validate` / `plan` importing no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import Field

from conftest import REPO, write_recipe
from factory.cli import main
from factory.cli.commands import methods_table
from factory.core.errors import RecipeInvalid, UserError
from factory.methods import all_methods, get_method, method_names, register, unregister
from factory.methods.base import CardFacts, QuantMethod
from factory.recipe import Strict, load_recipe

FIELDS = {"name", "paper_name", "bits", "output_format", "runtimes", "needs_calibration", "activations", "summary",
          "serving"}


def test_methods_json_lists_every_method_with_its_facts(capsys):
    assert main(["methods", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == method_names()
    for row in rows:
        assert set(row) == FIELDS
        assert row["bits"] and row["output_format"] in ("compressed-tensors", "bitsandbytes", "simulated", "gguf",
                                                        "peft-adapter")
    gptq = next(r for r in rows if r["name"] == "gptq")
    assert gptq["needs_calibration"] and gptq["paper_name"] == "GPTQ" and "vllm" in gptq["runtimes"]


def test_readme_method_table_is_the_generated_one():
    readme = (REPO / "README.md").read_text()
    table = methods_table([m.describe() for m in all_methods()], markdown=True)
    assert table in readme, "README's method table is stale: paste `factory methods --format markdown`"


class ToyOptions(Strict):
    scale: float = Field(1.0, gt=0, description="Multiply every weight by this.")


class Toy(QuantMethod):
    """Scales the decoder's weights: a stand-in for a method written outside the factory."""

    name = "toy"
    summary = "scales weights (test method)"
    output_format = "simulated"
    supported_bits = (16,)
    default_group_size = "per-channel"
    Options = ToyOptions

    def quantize(self, base_dir, settings, out_dir, recipe_dir):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(base_dir)
        with torch.no_grad():
            for layer in model.model.layers:
                layer.mlp.down_proj.weight.mul_(self.options(settings).scale)
        model.save_pretrained(out_dir)
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
        return {"engine": "toy", "format": "simulated", "device": "cpu", "peak_gpu_mb": None}

    def card_facts(self, settings):
        return CardFacts(engine="toy", format="simulated", tags=("toy",), load_note="", serve_note="")


@pytest.fixture
def toy():
    register("toy", Toy)
    yield
    unregister("toy")


def test_a_method_registered_from_outside_builds(toy, tmp_path, tiny_llama, capsys):
    from factory.pipeline.build import Build
    from factory.stages.artifact import quantize

    recipe_path = write_recipe(tmp_path, f"""
        name: toy-build
        method: toy
        weights: {{bits: 16}}
        toy: {{scale: 0.5}}
        models: [{{id: test/tiny, source: local, path: {tiny_llama}}}]
    """)
    recipe = load_recipe(recipe_path)
    assert recipe.method_options.scale == 0.5
    assert main(["methods", "--format", "json"]) == 0
    assert "toy" in [r["name"] for r in json.loads(capsys.readouterr().out)]

    build = Build(recipe, recipe.models[0], tmp_path)
    result = quantize(build)
    assert result.record.format == "simulated" and (result.output / "config.json").is_file()
    assert build.fingerprint_inputs["settings"]["options"] == {"scale": 0.5}


def test_a_registered_method_validates_its_own_block(toy, tmp_path):
    recipe_path = write_recipe(tmp_path, """
        name: toy-bad
        method: toy
        weights: {bits: 4}
        toy: {scale: -1}
        models: [{id: a/b}]
    """)
    with pytest.raises(RecipeInvalid) as exc:
        load_recipe(recipe_path)
    assert exc.value.problems == [f"{recipe_path}:4: toy.scale: must be greater than 0"]
    recipe_path.write_text(recipe_path.read_text().replace("scale: -1", "scale: 2"))
    with pytest.raises(RecipeInvalid) as exc:
        load_recipe(recipe_path)
    assert exc.value.problems == [f"{recipe_path}:3: weights.bits: toy supports 16 bits, not 4"]


def test_an_unregistered_method_is_unknown_again(tmp_path):
    assert "toy" not in method_names()
    with pytest.raises(UserError, match="unknown method 'toy'"):
        get_method("toy")


@pytest.mark.parametrize("command", [["validate", "recipes"], ["plan", "recipes/gptq-4bit.yaml", "--to", "HUB"],
                                     ["methods"]])
def test_listing_commands_import_no_torch(command, tmp_path):
    args = [str(tmp_path / "hub") if a == "HUB" else a for a in command]
    script = ("import sys\nfrom factory.cli import main\ncode = main(sys.argv[1:])\n"
              "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "torch was imported" not in done.stderr
    assert done.returncode in (0, 2), done.stderr[-2000:]  # plan offline may refuse an unpinned revision


def test_the_card_template_asks_no_method_or_output_kind_and_every_part_a_build_names_exists():
    """What differs between methods and kinds is a card part the build names (model_cards/README.md),
    so the template's tags never test a method, a format or an artifact kind."""
    import re

    from factory.core.paths import TEMPLATES_DIR
    from factory.pipeline.artifact import KINDS

    tags = re.findall(r"{%.*?%}", (TEMPLATES_DIR / "model_card.md.j2").read_text())
    for word in ("gguf", "simulated", "adapter", "format", "s.method", "artifact_kind", "runtime ==", "llama.cpp"):
        assert not [t for t in tags if word in t], word
    named = {kind.card_usage for kind in KINDS.values()}
    methods_seen = set()
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        recipe = load_recipe(path, check_model_configs=False)
        method = get_method(recipe.method)
        methods_seen.add(method.name)
        facts = method.card_facts(recipe.effective(recipe.models[0]))
        named |= {p for p in (facts.notice_part, facts.training_part, facts.weights_part) if p}
        assert facts.base_model_relation in ("quantized", "adapter", "finetune"), path.name
        assert bool(facts.notice_part) == method.simulated, path.name  # simulated storage is always said
    named |= {f"parts/speed-llama.cpp-{part}.md.j2" for part in ("batching", "base")}  # the runtime's sentences
    missing = [p for p in sorted(named) if not (TEMPLATES_DIR / p).is_file()]
    assert not missing
    assert len(methods_seen) >= 20  # the shipped recipes cover (nearly) every method
    for name in method_names():
        assert get_method(name).simulated == (get_method(name).output_format == "simulated"), name
