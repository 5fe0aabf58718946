"""The evaluate stage on a tiny Llama with the bundled smoke tasks, through lm-eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_factory, write_recipe
from factory.pipeline.build import Build
from factory.recipe import Gates, load_recipe
from factory.stages.artifact import quantize
from factory.stages.evaluate import evaluate
from factory.stages.evaluate.scores import check_gates, compare

EVAL = """evaluation:
  suite: smoke
  limit: 6
  perplexity_seq_len: 64
  batch_size: 4
"""


def _recipe(tmp_path, name, weights, model_dir, extra=EVAL):
    return write_recipe(tmp_path, f"name: {name}\nmethod: rtn\nweights: {weights}\n{extra}models:\n"
                        f"  - {{id: test/tiny, source: local, path: {model_dir}}}\n", f"{name}.yaml")


@pytest.fixture(scope="module")
def base_evals(tmp_path_factory) -> Path:
    """This module's own FACTORY_CACHE (CLI runs inherit it), so its base evaluations start from none."""
    cache = tmp_path_factory.mktemp("eval-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACTORY_CACHE", str(cache))
        yield cache / "base-evals" / "test--tiny"


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory, tiny_llama, base_evals):
    """Two recipes for the same model, quantized, sharing one workdir."""
    work = tmp_path_factory.mktemp("eval")
    builds = []
    for name, weights in (("rtn-4bit", "{bits: 4, group_size: 32}"), ("rtn-8bit", "{bits: 8, group_size: 32}")):
        recipe = load_recipe(_recipe(work, name, weights, tiny_llama))
        build = Build(recipe, recipe.models[0], work)
        quantize(build)
        builds.append(build)
    return work, builds


def test_evaluation_end_to_end_and_base_reuse(two_builds, base_evals):
    work, (first, second) = two_builds
    logs: list[str] = []
    one = evaluate(first, log=logs.append)
    assert one.base_reused is False and any("evaluating once" in line for line in logs)

    scores = json.loads((first.dir / "eval" / "scores.json").read_text())
    assert set(scores["tasks"]) == {"factory_smoke_mc", "factory_smoke_ppl", "demo_ppl"}
    acc = scores["tasks"]["factory_smoke_mc"]["acc"]
    assert acc["primary"] and acc["higher_is_better"]
    assert acc["recovery"] == pytest.approx(acc["quantized"] / acc["base"]) if acc["base"] else acc["recovery"] is None
    ppl = scores["tasks"]["demo_ppl"]["perplexity"]
    assert not ppl["higher_is_better"] and ppl["recovery"] == pytest.approx(ppl["base"] / ppl["quantized"])
    assert scores["harness"]["name"] == "lm-eval" and scores["harness"]["backend"] == "hf"
    assert scores["harness"]["harness_version"] and scores["harness"]["limit"] == 6 and scores["smoke"] is True
    assert (first.dir / "eval" / "lm_eval_results.json").is_file()
    assert first.manifest().stages["evaluate"].status == "done"
    assert first.manifest().gates.passed is True

    logs.clear()
    two = evaluate(second, log=logs.append)
    assert two.base_reused is True and any("reusing" in line for line in logs)
    # one base evaluation, in the machine's cache (FACTORY_CACHE), none in the workdir
    assert [p.name for p in base_evals.iterdir()] == [one.scores["base_evaluation"]] == [two.scores["base_evaluation"]]
    assert not (work / "base-evals").exists()

    again = evaluate(first, log=logs.append)
    assert again.stage.skipped is True


def test_gate_failure_marks_the_build_failed_and_exits_non_zero(two_builds, tmp_path):
    work, (first, _) = two_builds
    recipe_path = first.recipe.source_path
    text = recipe_path.read_text().replace(
        "  batch_size: 4\n", "  batch_size: 4\n  gates:\n    min_recovery: 1.5\n    max_ppl_ratio: 0.5\n")
    gated = recipe_path.with_name("rtn-4bit-gated.yaml")
    gated.write_text(text)
    done = run_factory("evaluate", str(gated), "--workdir", str(work))
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if "gate " in line]
    assert any("gate min_recovery: mean recovery" in line for line in lines)
    assert any("max_ppl_ratio" in line for line in lines) and "Traceback" not in done.stderr
    assert "skipped" in done.stdout  # gates changed, the figures did not: nothing re-ran
    manifest = json.loads((first.dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and not manifest["gates"]["passed"]


def test_never_quantized_is_one_line(tmp_path, tiny_llama):
    recipe = _recipe(tmp_path, "fresh", "{bits: 4, group_size: 32}", tiny_llama)
    done = run_factory("evaluate", str(recipe), "--workdir", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: fresh / test/tiny: not quantized yet "
                                   f"(run: factory quantize {recipe} --model test/tiny)")


def test_unknown_task_is_one_line_before_any_model_loads(two_builds):
    work, (first, _) = two_builds
    recipe = first.recipe.source_path.with_name("unknown-task.yaml")
    recipe.write_text(first.recipe.source_path.read_text().replace("  suite: smoke\n", "  suite: smoke\n  tasks: [no_such_task_xyz]\n"))
    done = run_factory("evaluate", str(recipe), "--workdir", str(work))
    assert done.returncode == 2
    assert done.stderr.strip() == "error: evaluation.tasks: unknown lm-eval task 'no_such_task_xyz'"


def test_task_whose_dataset_is_offline_is_one_line_and_not_cached(two_builds, base_evals):
    work, (first, _) = two_builds
    recipe = first.recipe.source_path.with_name("offline-task.yaml")
    recipe.write_text(first.recipe.source_path.read_text().replace(
        "  suite: smoke\n", "  suite: smoke\n  tasks: [piqa]\n  perplexity: []\n"))
    done = run_factory("evaluate", str(recipe), "--workdir", str(work))
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: evaluation: a task's dataset is not available")
    assert "Traceback" not in done.stderr
    for cached in base_evals.iterdir():
        assert ".partial-" not in cached.name
        assert json.loads((cached / "metrics.json").read_text())  # only complete entries


def test_recovery_and_gates_arithmetic():
    base = {"mc": {"acc": 0.8}, "wiki_ppl": {"perplexity": 10.0}}
    quantized = {"mc": {"acc": 0.6}, "wiki_ppl": {"perplexity": 12.5}}
    scores = compare(base, quantized, {"mc": {"acc": True}, "wiki_ppl": {"perplexity": False}})
    assert scores["tasks"]["mc"]["acc"]["recovery"] == pytest.approx(0.75)
    assert scores["tasks"]["wiki_ppl"]["perplexity"]["recovery"] == pytest.approx(0.8)
    assert scores["mean_recovery"] == pytest.approx(0.775)
    assert check_gates(scores, Gates(min_recovery=0.7, max_ppl_ratio=1.3)) == []
    failures = check_gates(scores, Gates(min_recovery=0.9, max_ppl_ratio=1.2, tasks={"mc": {"min_recovery": 0.8}}))
    assert failures == [
        "gate min_recovery: mean recovery 0.775 < 0.9",
        "gate mc.min_recovery: acc recovery 0.750 < 0.8",
        "gate wiki_ppl.max_ppl_ratio: perplexity 12.500 is 1.250x the base's 10.000 > 1.2",
    ]


def test_llava_next_evaluates_through_lmms_eval(tmp_path, tiny_llava):
    recipe = load_recipe(write_recipe(tmp_path, f"""
        name: llava-gptq
        method: gptq
        weights: {{bits: 4, group_size: 32}}
        calibration: {{source: demo, samples: 4, seq_len: 64}}
        evaluation: {{suite: smoke, limit: 4, perplexity_seq_len: 64, batch_size: 1}}
        models: [{{id: test/tiny-llava, source: local, path: {tiny_llava}, kind: llava-next}}]
    """))
    build = Build(recipe, recipe.models[0], tmp_path)
    quantize(build)
    result = evaluate(build, log=lambda line: None)
    assert set(result.scores["tasks"]) == {"factory_smoke_images", "demo_ppl"}
    images = result.scores["tasks"]["factory_smoke_images"]
    assert images["contains"]["primary"] and 0.0 <= images["contains"]["quantized"] <= 1.0
    assert result.scores["harness"]["name"] == "lmms-eval" and result.scores["harness"]["harness_version"] != "absent"
    raw = json.loads((build.dir / "eval" / "lmms_eval_results.json").read_text())
    assert raw["n-samples"]["factory_smoke_images"]["effective"] == 4
    assert not [m for m in images if "stderr" in m]


def test_vllm_backend_without_vllm_is_one_line(two_builds):
    work, (first, _) = two_builds
    recipe = first.recipe.source_path.with_name("vllm.yaml")
    recipe.write_text(first.recipe.source_path.read_text().replace("  suite: smoke\n", "  suite: smoke\n  backend: vllm\n"))
    done = run_factory("evaluate", str(recipe), "--workdir", str(work))
    assert done.returncode == 2
    assert done.stderr.strip() == "error: evaluation.backend: vllm is not installed here (it needs a GPU); use backend: hf"


# ---------------------------------------------------------------- the paper suite's protocol


def test_paper_suite_runs_mmlu_5_shot_and_reports_its_categories():
    """MMLU 5-shot as the paper's LoRA-FT table, the rest 0-shot; a recipe's num_fewshot replaces both."""
    from factory.recipe import Evaluation
    from factory.recipe.eval_plan import EvalPlan
    from factory.recipe.tasks import reported_tasks

    paper = EvalPlan.for_model(Evaluation(suite="paper"), "causal-lm")
    assert paper.task_fewshot == (("mmlu", 5),)
    assert paper.fewshot_groups() == {0: ["piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande"],
                                      5: ["mmlu"]}
    explicit = EvalPlan.for_model(Evaluation(suite="paper", num_fewshot=0), "causal-lm")
    assert explicit.task_fewshot == () and list(explicit.fewshot_groups()) == [0]
    assert paper.key() != explicit.key()  # the few-shot protocol is part of the evaluation's identity
    smoke = EvalPlan.for_model(Evaluation(suite="smoke"), "causal-lm")
    assert "task_fewshot" not in smoke.settings()  # plans without per-task counts keep their old keys
    assert reported_tasks(paper.tasks) == {"piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "mmlu",
                                           "mmlu_humanities", "mmlu_stem", "mmlu_social_sciences", "mmlu_other"}


def test_two_few_shot_counts_run_on_one_model_and_merge(tiny_llama, tmp_path, monkeypatch):
    """A plan with two few-shot counts: one harness pass each on one loaded model, one merged raw file,
    and only the asked-for tasks reported (not a group's members)."""
    import dataclasses

    import lm_eval

    from factory.pipeline.artifact import Artifact
    from factory.recipe import Evaluation
    from factory.recipe.eval_plan import EvalPlan
    from factory.stages.evaluate import lm_eval_adapter

    plan = dataclasses.replace(EvalPlan.for_model(Evaluation(suite="smoke", limit=4, batch_size=4), "causal-lm"),
                               task_fewshot=(("factory_smoke_mc", 2),))
    calls = []
    real = lm_eval.simple_evaluate

    def counting(**kwargs):
        calls.append((type(kwargs["model"]).__name__, kwargs["num_fewshot"]))
        return real(**kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", counting)
    measured = lm_eval_adapter.run(plan, Artifact("checkpoint", tiny_llama), tmp_path, "cpu")
    assert sorted(calls) == [("HFLM", 0), ("HFLM", 2)]  # the model object, loaded once, for both passes
    raw = json.loads((tmp_path / lm_eval_adapter.RAW_FILE).read_text())
    assert raw["n-shot"]["factory_smoke_mc"] == 2 and raw["n-shot"]["factory_smoke_ppl"] == 0
    assert set(measured.metrics) == {"factory_smoke_mc", "factory_smoke_ppl"}
    assert measured.higher_is_better["factory_smoke_mc"]["acc"] is True


def test_reported_tasks_keep_a_groups_categories_only():
    from factory.recipe.tasks import reported_tasks
    from factory.stages.evaluate.lm_eval_adapter import flatten

    results = {"results": {name: {"acc,none": 0.5, "acc_stderr,none": 0.01, "alias": name} for name in (
        "mmlu", "mmlu_humanities", "mmlu_stem", "mmlu_social_sciences", "mmlu_other", "mmlu_abstract_algebra",
        "piqa")}}
    kept = {t for t in flatten(results) if t in reported_tasks(("piqa", "mmlu"))}
    assert kept == {"piqa", "mmlu", "mmlu_humanities", "mmlu_stem", "mmlu_social_sciences", "mmlu_other"}


def test_mean_recovery_counts_mmlu_once():
    base = {"mmlu": {"acc": 0.6}, "mmlu_stem": {"acc": 0.5}, "piqa": {"acc": 0.8}}
    quantized = {"mmlu": {"acc": 0.3}, "mmlu_stem": {"acc": 0.25}, "piqa": {"acc": 0.8}}
    scores = compare(base, quantized, {})
    assert scores["tasks"]["mmlu_stem"]["acc"]["recovery"] == 0.5  # shown
    assert scores["mean_recovery"] == (0.5 + 1.0) / 2  # but counted once, inside MMLU
