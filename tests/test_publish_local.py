"""Card and publish to a local folder target on a tiny Llama: the card, the layout, idempotency, refusals."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from conftest import run_factory, write_recipe
from factory.core.errors import RecipeInvalid, UserError
from factory.core.hub import LocalFolder
from factory.core.hub_files import card_metadata
from factory.pipeline.build import Build
from factory.pipeline.publish import publish
from factory.recipe import load_recipe
from factory.stages.card import card
from factory.stages.push import GatesFailed, local_paths, push

EVAL = "evaluation: {suite: smoke, limit: 4, perplexity_seq_len: 64, batch_size: 4}"


def _recipe(directory, name, model_dir, bits=4, extra=EVAL, publish_block="publish: {org: tester}"):
    return write_recipe(directory, f"""
        name: {name}
        method: rtn
        weights: {{bits: {bits}, group_size: 32}}
        {extra}
        {publish_block}
        models: [{{id: test/tiny, source: local, path: {model_dir}, license: mit}}]
    """, f"{name}.yaml")


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_llama):
    """rtn-8bit and rtn-4bit of one model, published to a local folder (the 4-bit one second: it has a sibling)."""
    work = tmp_path_factory.mktemp("publish")
    target = LocalFolder(work / "hub")
    results = {}
    for name, bits in (("rtn-8bit", 8), ("rtn-4bit", 4)):
        recipe = load_recipe(_recipe(work, name, tiny_llama, bits))
        build = Build(recipe, recipe.models[0], work)
        results[name] = publish(build, target, log=lambda line: None)
    return work, target, results


def test_local_folder_holds_exactly_the_upload(published):
    work, target, results = published
    done = results["rtn-4bit"]
    repo = work / "hub" / "tester" / "tiny-rtn-4bit"
    assert done.pushed.repo_id == "tester/tiny-rtn-4bit" and repo.is_dir()
    files = {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()}
    assert files == set(done.pushed.files)
    assert {"README.md", "recovery.png", "comparison.png", "config.json", "model.safetensors",
            "factory_recipe.yaml", "evaluation/scores.json", "evaluation/lm_eval_results.json"} <= files
    assert not [p for p in (work / "hub" / "tester").iterdir() if p.name.startswith(".")]  # no partial left
    manifest = done.build.manifest()
    assert manifest.stages["push"].verified is True and manifest.stages["card"].status == "done"


def test_card_metadata_is_valid_for_the_hub(published):
    work, _, results = published
    build = results["rtn-4bit"].build
    text = (work / "hub" / "tester" / "tiny-rtn-4bit" / "README.md").read_text()
    parsed = ModelCard(text)  # huggingface_hub's own parsing: YAML and model-index
    data = parsed.data.to_dict()
    assert data["base_model"] == "test/tiny" and data["base_model_relation"] == "quantized"
    assert data["license"] == "mit" and data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation"
    assert {"rtn", "4-bit", "compressed-tensors", "llm-compressor"} <= set(data["tags"])
    results_index = data["model-index"][0]["results"]
    assert {r["dataset"]["type"] for r in results_index} == {"factory_smoke_mc", "factory_smoke_ppl", "demo_ppl"}
    assert data["factory"]["fingerprint"] == results["rtn-4bit"].pushed.fingerprint
    assert data["factory"]["base_revision"].startswith("local:")

    scores = json.loads((build.dir / "eval" / "scores.json").read_text())
    assert f"{100 * scores['mean_recovery']:.1f}%" in text
    assert "| Task | Metric | Base | This model | Recovery |" in text
    assert "rtn-8bit" in text and "![Mean recovery of each build](comparison.png)" in text  # the sibling
    assert "smoke" in text and "arXiv:2404.14047" in text
    # The exact recipe and the command that reproduces it, as published: no local path (factory.stages.push).
    published_paths = local_paths(build)
    assert published_paths.scrub(build.recipe.source_path.read_text().strip()) in text
    assert f"factory publish {published_paths.scrub(str(build.recipe.source_path))} --model test/tiny" in text
    assert str(work) not in text
    assert "\n\n\n" not in text.split("---", 2)[2]  # template whitespace under control
    png = (work / "hub" / "tester" / "tiny-rtn-4bit" / "recovery.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_second_publish_is_a_no_op(published):
    work, target, results = published
    build = results["rtn-4bit"].build
    before = {p: p.stat().st_mtime_ns for p in (work / "hub" / "tester" / "tiny-rtn-4bit").rglob("*")}
    logs = []
    again = publish(build, target, log=logs.append)
    assert again.pushed.skipped and any("already holds" in line for line in logs)
    assert any("quantize: reused" in line for line in logs)
    assert {p: p.stat().st_mtime_ns for p in (work / "hub" / "tester" / "tiny-rtn-4bit").rglob("*")} == before


def test_three_bit_card_carries_the_paper_warning(tmp_path, tiny_llama):
    recipe = load_recipe(_recipe(tmp_path, "rtn-3bit", tiny_llama, bits=3))
    done = publish(Build(recipe, recipe.models[0], tmp_path), LocalFolder(tmp_path / "hub"), log=lambda line: None)
    text = (tmp_path / "hub" / "tester" / "tiny-rtn-3bit" / "README.md").read_text()
    assert "> [!WARNING]" in text and "clear loss at 3 bits" in text
    assert done.pushed.repo_id == "tester/tiny-rtn-3bit"


def test_gate_failure_refuses_unless_forced(published, tmp_path):
    work, target, results = published
    source = results["rtn-4bit"].build.recipe.source_path
    gated = source.with_name("rtn-4bit-gated.yaml")
    gated.write_text(source.read_text().replace(
        "evaluation: {suite: smoke, limit: 4, perplexity_seq_len: 64, batch_size: 4}",
        "evaluation: {suite: smoke, limit: 4, perplexity_seq_len: 64, batch_size: 4, gates: {min_recovery: 5.0}}")
        .replace("name: rtn-4bit", "name: rtn-4bit-gated"))
    hub = tmp_path / "hub"
    done = run_factory("publish", str(gated), "--workdir", str(work), "--to", str(hub))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "failed its quality gates" in done.stderr and "--force" in done.stderr
    assert not hub.exists()  # nothing published
    forced = run_factory("publish", str(gated), "--workdir", str(work), "--to", str(hub), "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    card_text = (hub / "tester" / "tiny-rtn-4bit-gated" / "README.md").read_text()
    assert "[!CAUTION]" in card_text and "gate min_recovery" in card_text


def test_dry_run_writes_nothing_and_lists_the_files(published, tmp_path):
    work, _, results = published
    source = results["rtn-4bit"].build.recipe.source_path
    hub = tmp_path / "dry"
    done = run_factory("publish", str(source), "--workdir", str(work), "--to", str(hub), "--dry-run")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not hub.exists()
    out = done.stdout
    assert "dry run: nothing is written" in out and "repo tester/tiny-rtn-4bit: would create the repo" in out
    for name in results["rtn-4bit"].pushed.files:
        assert name in out


def test_push_without_evaluation_is_one_line(tmp_path, tiny_llama):
    recipe = _recipe(tmp_path, "rtn-noeval", tiny_llama)
    assert run_factory("quantize", str(recipe), "--workdir", str(tmp_path)).returncode == 0
    done = run_factory("push", str(recipe), "--workdir", str(tmp_path), "--to", str(tmp_path / "hub"))
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: rtn-noeval / test/tiny: not evaluated yet; nothing is published without "
                                   f"scores (run: factory evaluate {recipe} --model test/tiny)")
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize("template, message", [
    ("'{org}/{model}--{recipe}'", "is not a valid Hub repo id: Cannot have -- or .. in repo_id"),
    ("'{org}/{model}-{nope}'", "is not valid (KeyError"),
    ("'{org}/a/b'", "must be exactly 'namespace/name'"),
])
def test_repo_name_the_hub_would_refuse_fails_validation(tmp_path, tiny_llama, template, message):
    recipe = _recipe(tmp_path, "rtn-badname", tiny_llama, publish_block=f"publish: {{org: tester, repo: {template}}}")
    done = run_factory("validate", str(recipe))
    assert done.returncode == 2
    line = done.stderr.strip()
    assert line.startswith(f"{recipe}:") and ": publish.repo: " in line and message in line, line
    with pytest.raises(RecipeInvalid, match="publish.repo"):
        load_recipe(recipe)


def test_org_from_the_command_line_is_checked_too(published):
    work, target, results = published
    build = results["rtn-4bit"].build
    with pytest.raises(UserError, match="publish.repo: 'bad org/"):
        from factory.stages.push import resolve_repo_id
        resolve_repo_id(build, target, "bad org")


def test_card_stage_skips_when_nothing_changed(published):
    _, _, results = published
    build = results["rtn-4bit"].build
    again = card(build, "tester/tiny-rtn-4bit")
    assert again.skipped
    other = card(build, "someone/else")  # the repo id is shown in the card: it re-renders
    assert not other.skipped and "someone/else" in (other.output / "README.md").read_text()
    card(build, "tester/tiny-rtn-4bit")


def test_local_metadata_reader():
    assert card_metadata("---\nfactory: {fingerprint: abc}\n---\n# x") == {"factory": {"fingerprint": "abc"}}
    assert card_metadata("# no front matter") == {}
    assert card_metadata("---\n: [\n---\n") == {}


def test_gates_failed_is_not_a_user_error():
    assert GatesFailed("x").exit_code == 1 and not isinstance(GatesFailed("x"), UserError)
