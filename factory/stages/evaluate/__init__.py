"""The evaluate stage: a build's artifact -> builds/<recipe>/<model>/eval/.

The build and its base model are measured with the same plan (harness tasks plus the
paper-protocol perplexity); the base model's figures are measured once per (model revision,
plan, library versions) and reused by every recipe for that model: from this machine's cache
(<FACTORY_CACHE>/base-evals/, kept between jobs and workdirs) or from the fleet's store, a Hub
dataset repo the recipe names in `publish.base_evals` (factory.stages.evaluate.base_store).
eval/ holds the harness's raw output, metrics.json and scores.json (base, build, recovery).
Gates are checked after the stage, so changing a gate never re-runs an evaluation.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path

from factory.core.errors import UserError
from factory.engines.base_models import fetch_base
from factory.engines.loading import compute_dtype, text_tokenizer
from factory.pipeline.artifact import NF4_REFERENCE, Artifact
from factory.pipeline.build import Build, StageResult, run_stage
from factory.pipeline.fingerprint import evaluation_fingerprint, library_versions
from factory.pipeline.stage import Options, Stage
from factory.recipe.eval_plan import BUNDLED_TASKS, EvalPlan
from factory.stages.card import score_table
from factory.stages.evaluate import lm_eval_adapter, placement
from factory.stages.evaluate.base_store import (METRICS_FORMAT as METRICS_FORMAT,  # the layout of metrics.json
                                                BaseFigures, base_identity, obtain)
from factory.stages.evaluate.perplexity import dataset_tokens, perplexity
from factory.stages.evaluate.scores import check_gates, compare

METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.json"


def _adapter(harness: str):
    if harness == "lmms-eval":
        from factory.stages.evaluate import lmms_eval_adapter  # imported only for LLaVA-Next: it pulls more

        return lmms_eval_adapter
    return lm_eval_adapter


@dataclass
class Evaluated:
    stage: StageResult
    scores: dict
    gate_failures: list[str]
    base_reused: bool
    base_source: str = "measured"  # cache (this machine), store (the fleet's), measured (here)


def _checked_plan(build: Build):
    plan = EvalPlan.for_model(build.recipe.evaluation, build.entry.kind)
    if plan.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise UserError("evaluation.backend: vllm is not installed here (it needs a GPU); use backend: hf")
    adapter = _adapter(plan.harness)
    if plan.tasks:
        adapter.check_tasks(plan.tasks)
    return plan, adapter


def evaluate(build: Build, log=print) -> Evaluated:
    plan, adapter = _checked_plan(build)

    base = base_figures(build, plan, adapter, log)
    base_dir = base.path
    artifact = build.artifact()

    def work(out: Path) -> dict:
        measured = measure(plan, adapter, artifact, out)
        base = json.loads((base_dir / METRICS_FILE).read_text())
        scores = {
            **compare(base["metrics"], measured["metrics"], measured["higher_is_better"]),
            "harness": {"name": plan.harness, **plan.settings(), "device": _device(), "dtype": measured["dtype"],
                        "placement": measured["placement"]["description"],
                        "libraries": library_versions(),
                        **({"loaded_as": artifact.loaded_as} if artifact.loaded_as else {})},
            "smoke": any(t in BUNDLED_TASKS for t in plan.tasks) or "demo" in plan.perplexity,
            "base_evaluation": base_dir.name,
        }
        if build.method.nf4_reference:
            # The paper's reference row for LoRA-FT: the NF4 base without fine-tuning, same harness.
            reference = nf4_reference_figures(build, plan, adapter, log)
            nf4 = json.loads((reference.path / METRICS_FILE).read_text())
            scores["nf4_reference"] = compare(base["metrics"], nf4["metrics"], nf4["higher_is_better"])
            scores["nf4_reference_evaluation"] = reference.path.name
        (out / SCORES_FILE).write_text(json.dumps(scores, indent=2, sort_keys=True) + "\n")
        return {"mean_recovery": scores["mean_recovery"], "plan_key": plan.key(), "base_evaluation": str(base_dir),
                "placement": measured["placement"]["description"]}

    stage = run_stage(build, "evaluate", work, fingerprint=evaluation_fingerprint(build))
    scores = json.loads((stage.output / SCORES_FILE).read_text())
    failures = check_gates(scores, build.recipe.evaluation.gates)
    build.record_gates(failures)
    return Evaluated(stage, scores, failures, base.reused, base.source)


def evaluate_base_model(build: Build, log=print) -> BaseFigures:
    """Only the base model's figures for this build's plan (`factory evaluate-base`): from this
    machine's cache or the store, else measured here, cached and pushed to the store. No build needed."""
    plan, adapter = _checked_plan(build)
    return base_figures(build, plan, adapter, log)


def base_figures(build: Build, plan: EvalPlan, adapter, log) -> BaseFigures:
    """The base model's figures for this plan (factory.stages.evaluate.base_store): cache, store, or measured once."""
    def measure_base(out: Path) -> None:
        base = fetch_base(build.entry, build.recipe_dir)
        measure(plan, adapter, Artifact("checkpoint", base.path), out)

    publish = build.recipe.publish
    return obtain(base_identity(build.entry, build.recipe_dir, plan), publish.base_evals, measure_base, log,
                  private=publish.private)


def nf4_reference_figures(build: Build, plan: EvalPlan, adapter, log) -> BaseFigures:
    """The base loaded as NF4 without fine-tuning (the LoRA-FT table's NormalFloat row): measured once per
    (model revision, plan, library versions) and cached and shared like the base's figures, so the QLoRA
    and IR-QLoRA builds of a model, and every rebuild, reuse one measurement."""
    def measure_nf4(out: Path) -> None:
        base = fetch_base(build.entry, build.recipe_dir)
        measure(plan, adapter, Artifact("checkpoint", base.path, base_quantization="nf4"), out)

    identity = {**base_identity(build.entry, build.recipe_dir, plan), "reference": NF4_REFERENCE}
    publish = build.recipe.publish
    return obtain(identity, publish.base_evals, measure_nf4, log, private=publish.private, what="NF4 base")


def evaluate_base(build: Build, plan: EvalPlan, adapter, log) -> tuple[Path, bool]:
    """The base model's figures for this plan and whether they were reused (not measured now)."""
    base = base_figures(build, plan, adapter, log)
    return base.path, base.reused


def measure(plan: EvalPlan, adapter, artifact: Artifact, out: Path) -> dict:
    """Harness tasks plus paper-protocol perplexity; writes metrics.json and returns it:
    {"metrics": {task: {metric: value}}, "higher_is_better": {task: {metric: bool}}, "dtype": ...}."""
    started = time.time()
    where = placement.choose(plan.backend, placement.dense_bytes(artifact.weights_dir))
    result = {"metrics": {}, "higher_is_better": {}, "dtype": None, "placement": where.record()}
    if plan.tasks:
        measured = adapter.run(plan, artifact, out, _device(), where)
        result.update(metrics=measured.metrics, higher_is_better=measured.higher_is_better, dtype=measured.dtype)
    if plan.perplexity:
        ppl, dtype = paper_perplexity(plan, artifact, where)
        (out / "perplexity.json").write_text(json.dumps(
            {"protocol": f"non-overlapping {plan.perplexity_seq_len}-token windows (Huang et al. 2024)",
             "perplexity": ppl}, indent=2) + "\n")
        for name, value in ppl.items():
            result["metrics"][f"{name}_ppl"] = {"perplexity": value}
            result["higher_is_better"][f"{name}_ppl"] = {"perplexity": False}
        result["dtype"] = result["dtype"] or dtype
    (out / METRICS_FILE).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / "timing.json").write_text(json.dumps({"wall_time_s": round(time.time() - started, 2)}) + "\n")
    return result


def paper_perplexity(plan: EvalPlan, artifact: Artifact, where: "placement.Placement | None" = None
                     ) -> tuple[dict[str, float], str]:
    import torch

    tokenizer = text_tokenizer(artifact.preprocessor(plan.kind))
    # the perplexity runs in transformers whatever the harness's backend; a sharded placement shards it too
    device_map = "auto" if where is not None and where.backend == "hf" and where.device_map == "auto" else _device()
    model = artifact.load(plan.kind, dtype=compute_dtype(), device_map=device_map).eval()
    try:
        return ({name: perplexity(model, dataset_tokens(name, tokenizer, plan.perplexity_seq_len),
                                  plan.perplexity_seq_len) for name in plan.perplexity},
                str(model.dtype).removeprefix("torch."))
    finally:
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class EvaluateStage(Stage):
    name = "evaluate"
    help = "score quantized builds against their base model"
    output = "eval"
    needs = {"artifact": ""}
    missing = "not evaluated yet"

    def preflight(self, build: Build, options: Options) -> None:
        _checked_plan(build)  # an unknown task or a missing backend: one line, before any build starts

    def run(self, build: Build, options: Options) -> Evaluated:
        return evaluate(build, options.log)

    def lines(self, build: Build, result: Evaluated, options: Options) -> list[str]:
        skipped = [f"  skipped: {result.stage.output} is already evaluated with these settings"] if result.stage.skipped else []
        return [*skipped, score_table(result.scores), f"  scores: {result.stage.output / SCORES_FILE}"]

    def warnings(self, build: Build, result: Evaluated) -> list[str]:
        return [f"{build.recipe.name} / {build.entry.id}: {line}" for line in result.gate_failures]

    def exit_code(self, results: list) -> int:
        return 1 if any(r.gate_failures for _, r in results) else 0

    def published(self, build: Build, result: Evaluated) -> str:
        mean = result.scores.get("mean_recovery")
        return ("  evaluate: " + ("reused the finished evaluation" if result.stage.skipped else "done")
                + (f", mean recovery {mean:.3f}" if mean is not None else ""))
