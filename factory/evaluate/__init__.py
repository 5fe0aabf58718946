"""The evaluate stage: builds/<recipe>/<model>/model/ -> builds/<recipe>/<model>/eval/.

The quantized model and its base model are measured with the same plan (harness tasks plus
the paper-protocol perplexity); the base model's figures are cached once per (model revision,
plan, library versions) in <workdir>/base-evals/ and reused by every recipe for that model.
eval/ holds the harness's raw output, metrics.json and scores.json (base, quantized, recovery).
Gates are checked after the stage, so changing a gate never re-runs an evaluation.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from factory.build import Build, StageResult, library_versions, run_stage
from factory.errors import UserError
from factory.evaluate import lm_eval_adapter
from factory.evaluate.perplexity import dataset_tokens, perplexity
from factory.evaluate.plan import BUNDLED_TASKS, EvalPlan
from factory.evaluate.scores import check_gates, compare
from factory.models import fetch_base, slug, source_revision

ADAPTERS = {"lm-eval": lm_eval_adapter}
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.json"


def _adapter(harness: str):
    if harness == "lmms-eval":
        from factory.evaluate import lmms_eval_adapter  # imported only for LLaVA-Next: it pulls more

        return lmms_eval_adapter
    return ADAPTERS[harness]


@dataclass
class Evaluated:
    stage: StageResult
    scores: dict
    gate_failures: list[str]
    base_reused: bool


def evaluate(build: Build, log=print) -> Evaluated:
    if not build.stage_done("quantize", build.model_dir):
        raise UserError(f"{build.recipe.name} / {build.entry.id}: not quantized yet "
                        f"(run: factory quantize {build.recipe.source_path or build.recipe.name} --model {build.entry.id})")
    plan = EvalPlan.for_model(build.recipe.evaluation, build.entry.kind)
    if plan.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise UserError("evaluation.backend: vllm is not installed here (it needs a GPU); use backend: hf")
    adapter = _adapter(plan.harness)
    if plan.tasks:
        adapter.check_tasks(plan.tasks)

    base_dir, reused = evaluate_base(build, plan, adapter, log)
    fingerprint = evaluation_fingerprint(build)

    def work(out: Path) -> dict:
        quantized = measure(plan, adapter, build.model_dir, out)
        base = json.loads((base_dir / METRICS_FILE).read_text())
        scores = {
            **compare(base, quantized),
            "harness": {"name": plan.harness, **plan.settings(), "device": _device(), "dtype": "auto",
                        "libraries": library_versions()},
            "smoke": any(t in BUNDLED_TASKS for t in plan.tasks) or "demo" in plan.perplexity,
            "base_evaluation": str(base_dir),
        }
        (out / SCORES_FILE).write_text(json.dumps(scores, indent=2, sort_keys=True) + "\n")
        return {"mean_recovery": scores["mean_recovery"], "plan_key": plan.key(), "base_evaluation": str(base_dir)}

    stage = run_stage(build, "evaluate", build.dir / "eval", work, fingerprint=fingerprint)
    scores = json.loads((stage.output / SCORES_FILE).read_text())
    failures = check_gates(scores, build.recipe.evaluation.gates)
    build.record_gates(failures)
    return Evaluated(stage, scores, failures, reused)


def evaluation_fingerprint(build: Build) -> str:
    """The evaluate stage's fingerprint: the build's plus the plan's (computable without running it)."""
    plan = EvalPlan.for_model(build.recipe.evaluation, build.entry.kind)
    return hashlib.sha256(f"{build.fingerprint()}:{plan.key()}".encode()).hexdigest()[:16]


def evaluate_base(build: Build, plan: EvalPlan, adapter, log) -> tuple[Path, bool]:
    """The base model's figures for this plan: from the cache, or measured once and cached."""
    identity = {"model": build.entry.id, "revision": source_revision(build.entry, build.recipe_dir),
                "plan": plan.settings(), "libraries": library_versions()}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    target = build.root / "base-evals" / slug(build.entry.id) / key
    if (target / METRICS_FILE).is_file():
        log(f"  base model: reusing its evaluation from {target}")
        return target, True
    log(f"  base model: evaluating once for this plan (cached in {target})")
    partial = target.with_name(f"{key}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        base = fetch_base(build.entry, build.recipe_dir)
        measure(plan, adapter, base.path, partial)
        (partial / "identity.json").write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target, False


def measure(plan: EvalPlan, adapter, model_path: Path, out: Path) -> dict[str, dict[str, float]]:
    """Harness tasks plus paper-protocol perplexity; writes metrics.json and returns it."""
    started = time.time()
    metrics: dict[str, dict[str, float]] = {}
    if plan.tasks:
        metrics.update(adapter.run(plan, model_path, out, _device()))
    if plan.perplexity:
        ppl = paper_perplexity(plan, model_path)
        (out / "perplexity.json").write_text(json.dumps(
            {"protocol": f"non-overlapping {plan.perplexity_seq_len}-token windows (Huang et al. 2024)",
             "perplexity": ppl}, indent=2) + "\n")
        metrics.update({f"{name}_ppl": {"perplexity": value} for name, value in ppl.items()})
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    (out / "timing.json").write_text(json.dumps({"wall_time_s": round(time.time() - started, 2)}) + "\n")
    return metrics


def paper_perplexity(plan: EvalPlan, model_path: Path) -> dict[str, float]:
    import torch

    from factory.quantize.common import load_preprocessor, model_class, text_tokenizer

    tokenizer = text_tokenizer(load_preprocessor(plan.kind, model_path))
    device = _device()
    model = model_class(plan.kind).from_pretrained(model_path, dtype="auto", device_map=device).eval()
    try:
        return {name: perplexity(model, dataset_tokens(name, tokenizer, plan.perplexity_seq_len),
                                 plan.perplexity_seq_len) for name in plan.perplexity}
    finally:
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
