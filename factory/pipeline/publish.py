"""`publish`: every stage of the pipeline (factory.registry.PIPELINE) for one build, in order,
reusing finished stages: artifact (quantize or finetune) -> evaluate -> speed (when the recipe
turns it on) -> card -> push.

Every stage's preflight runs first, so a bad repo name, a missing token or runtime, or an unknown
task stops the build in seconds, not after hours of quantization.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from factory.pipeline.build import Build
from factory.pipeline.stage import Options, run
from factory.registry import pipeline


@dataclass
class Published:
    build: Build
    results: dict = field(default_factory=dict)  # stage name -> that stage's result

    @property
    def evaluated(self):
        return self.results["evaluate"]

    @property
    def pushed(self):
        return self.results["push"]


def publish(build: Build, target, org: str | None = None, dry_run: bool = False, force: bool = False,
            log=print) -> Published:
    """Run the pipeline for one build."""
    options = Options(target=target, org=org, dry_run=dry_run, force=force, log=log)
    stages = [stage for stage in pipeline() if stage.applies(build)]
    for stage in stages:
        stage.preflight(build, options)
    done = Published(build)
    for stage in stages:
        done.results[stage.name] = run(stage, build, options)
        line = stage.published(build, done.results[stage.name])
        if line:
            log(line)
    return done
