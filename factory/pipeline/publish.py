"""`publish` = quantize (or finetune) -> evaluate -> speed (unless the recipe turns it off) -> card -> push for one build, reusing finished stages."""

from __future__ import annotations

from dataclasses import dataclass

from factory.pipeline.build import Build
from factory.stages.card import card
from factory.stages.evaluate import Evaluated, evaluate
from factory.core.hub import Target
from factory.stages.push import PushResult, push, resolve_repo_id
from factory.stages.artifact import build_artifact
from factory.stages.speed import check_runtime, speed


@dataclass
class Published:
    build: Build
    evaluated: Evaluated
    pushed: PushResult


def publish(build: Build, target: Target, org: str | None = None, dry_run: bool = False, force: bool = False,
            log=print) -> Published:
    # The repo id is checked (and the Hub asked for the user name) before hours of quantization.
    repo = resolve_repo_id(build, target, org)
    if hasattr(target, "require_token") and not dry_run:
        target.require_token()
    if build.recipe.evaluation.speed.enabled:
        check_runtime(build.recipe.evaluation.speed)  # a runtime that is not installed: one line, before any work
    quantized = build_artifact(build, log=log)
    log(f"  {build.artifact_stage}: " + ("reused the finished build" if quantized.skipped
                          else f"done in {quantized.record.wall_time_s:.1f} s"))
    evaluated = evaluate(build, log=log)
    log("  evaluate: " + ("reused the finished evaluation" if evaluated.stage.skipped else "done")
        + (f", mean recovery {evaluated.scores['mean_recovery']:.3f}" if evaluated.scores.get("mean_recovery") is not None else ""))
    if build.recipe.evaluation.speed.enabled:
        measured = speed(build, log=log)
        log("  speed: " + ("reused the finished measurement" if measured.skipped
                           else f"measured in {measured.record.get('runtime')}"))
    rendered = card(build, repo)
    log(f"  card: {rendered.output / 'README.md'}" + (" (unchanged)" if rendered.skipped else ""))
    pushed = push(build, target, repo, dry_run=dry_run, force=force, log=log)  # refuses failed gates unless forced
    return Published(build, evaluated, pushed)
