"""Fake evaluated build folders for `factory report` tests: the files a real build leaves (manifest.json,
eval/scores.json, speed/speed.json), written from a recipe without running a model."""

from __future__ import annotations

import json
from pathlib import Path

from factory.pipeline.build import Build
from factory.pipeline.manifest import MANIFEST, Manifest, StageRecord
from factory.recipe import load_recipe

ACC_TASKS = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande")


def scores_for(figures: dict[str, tuple[float, float]], smoke: bool = False, nf4: dict | None = None) -> dict:
    """scores.json from {task: (base, quantized)}; a task ending in _ppl is a perplexity (lower is better)."""
    def compare(values: dict[str, tuple[float, float]]) -> dict:
        tasks, recoveries = {}, []
        for task, (base, ours) in values.items():
            lower = task.endswith("_ppl")
            metric = "perplexity" if lower else "acc"
            recovery = base / ours if lower else ours / base
            tasks[task] = {metric: {"base": base, "quantized": ours, "recovery": recovery,
                                    "higher_is_better": not lower, "primary": True}}
            recoveries.append(recovery)
        return {"tasks": tasks, "mean_recovery": sum(recoveries) / len(recoveries)}

    scores = {**compare(figures), "smoke": smoke, "base_evaluation": "0123456789abcdef",
              "harness": {"name": "lm-eval", "placement": "transformers on the CPU"}}
    if nf4 is not None:
        scores["nf4_reference"] = compare(nf4)
        scores["nf4_reference_evaluation"] = "fedcba9876543210"
    return scores


def speed_for(decode: float) -> dict:
    return {"runtime": "transformers", "device": "cpu",
            "build": {"batches": [{"batch_size": 1, "decode_tokens_per_s": decode, "prefill_tokens_per_s": 10 * decode}]},
            "base": {"batches": [{"batch_size": 1, "decode_tokens_per_s": 2 * decode}]}}


def fake_build(root: Path, recipe_path: Path | str, model: str, scores: dict, *, size_bytes: int = 5_000_000_000,
               speed: dict | None = None, artifact: dict | None = None) -> Build:
    recipe = load_recipe(recipe_path)
    entry = next(e for e in recipe.models if e.id == model)
    build = Build(recipe, entry, root)
    stage = build.artifact_stage
    manifest = Manifest(recipe=recipe.name, model=model, fingerprint="f" * 16,
                        fingerprint_inputs={"settings": build.settings.model_dump(mode="json")})
    manifest.stages[stage] = StageRecord(status="done", fingerprint="f" * 16, size_bytes=size_bytes,
                                         format=build.method.output_format, **(artifact or {}))
    manifest.stages["evaluate"] = StageRecord(status="done", fingerprint="e" * 16)
    (build.dir / "eval").mkdir(parents=True, exist_ok=True)
    (build.dir / "eval" / "scores.json").write_text(json.dumps(scores))
    if speed is not None:
        manifest.stages["speed"] = StageRecord(status="done", fingerprint="s" * 16, runtime=speed["runtime"])
        (build.dir / "speed").mkdir(exist_ok=True)
        (build.dir / "speed" / "speed.json").write_text(json.dumps(speed))
    manifest.write(build.dir / MANIFEST)
    return build
