"""The stage contract, and the runner that holds every stage to it.

A stage is one class (factory/stages/), registered by name in factory/registry.py (STAGES), and
`PIPELINE` says the order `publish` runs them in. Each declares:

  name      its key in the registry and in `needs`
  verbs     the CLI commands that run it (the artifact stage has two: quantize, finetune)
  output    its folder under the build (None: it writes elsewhere, as push does)
  needs     the stages whose finished output it reads; the runner refuses to start without them
            (one line naming the command to run first), and nothing else checks
  preflight refuses bad input before any work (a missing runtime, an unknown task, a repo name the
            Hub would refuse), so `publish` fails in seconds, not after hours of quantization
  fingerprint  what its output depends on (None: the build's own fingerprint); a finished output
            with the same fingerprint is not made again
  work      work(build, out, options) -> figures: fill `out` (its folder, still aside) and return
            what the manifest records; the runner renames the folder into place (crash-safe)
  run       by default `run_stage(build, name, work, fingerprint)`; a stage whose result is more than
            its folder overrides it (evaluate checks the quality gates after, the artifact stage runs
            the method's preflight before and removes its scratch after, push writes to a target, not
            a folder); `lines` says the result on the console

"artifact" in `needs` stands for the stage that makes the build's artifact (the method's verb).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from factory.pipeline.build import run_stage

if TYPE_CHECKING:
    from factory.pipeline.build import Build


@dataclass
class Options:
    """What a command hands the stages it runs."""

    target: Any = None  # where the build is published (factory.core.hub: the Hub or a local folder)
    org: str | None = None
    dry_run: bool = False
    force: bool = False
    verb: str | None = None  # the command that asked, where a stage has several verbs
    log: Callable[[str], None] = print
    repo_ids: dict = field(default_factory=dict)  # build label -> repo id, resolved once (factory.stages.push)


class Stage:
    """Base class of every stage; subclasses set the class attributes and implement `run` and `lines`."""

    name: ClassVar[str]
    verbs: ClassVar[tuple[str, ...]] = ()  # default: (name,)
    help: ClassVar[str | dict[str, str]] = ""  # the command's help line (per verb, where it has several)
    output: ClassVar[str | None]
    needs: ClassVar[dict[str, str]] = {}  # {stage it reads: why, said with the "run this first" line}
    missing: ClassVar[str | dict[str, str]]  # what the build lacks when this stage has not run (per verb)
    # which target options its commands take: None, "read" (--to, --org), "write" (also --force,
    # --dry-run, --summary)
    target_options: ClassVar[str | None] = None

    def commands(self) -> tuple[str, ...]:
        return self.verbs or (self.name,)

    def help_for(self, verb: str) -> str:
        return self.help[verb] if isinstance(self.help, dict) else self.help

    def missing_for(self, verb: str) -> str:
        return self.missing[verb] if isinstance(self.missing, dict) else self.missing

    def applies(self, build: "Build") -> bool:
        """Whether `publish` runs it for this build (the speed stage: when the recipe turns it on)."""
        return True

    def preflight(self, build: "Build", options: Options) -> None:
        """Refuse bad input before any stage of the build starts (raise UserError)."""

    def fingerprint(self, build: "Build", options: Options) -> str | None:
        """What the stage's output depends on; None: the build's fingerprint."""
        return None

    def work(self, build: "Build", out: Path, options: Options) -> dict:
        """Fill `out` (the stage's folder, aside until it succeeds); return the figures the manifest records."""
        raise NotImplementedError

    def run(self, build: "Build", options: Options) -> Any:
        """The work, skipped when a finished output has the same fingerprint (factory.pipeline.build.run_stage)."""
        return run_stage(build, self.name, lambda out: self.work(build, out, options), self.fingerprint(build, options))

    def before(self, recipe, options: Options) -> list[str]:
        """Lines a stage command prints once per recipe, before its builds (may refuse the recipe)."""
        return []

    def header(self, build: "Build", options: Options) -> str | None:
        """The line a stage command prints before it runs one build."""
        return f"{options.verb or self.name} {build.recipe.name} / {build.entry.id}"

    def lines(self, build: "Build", result: Any, options: Options) -> list[str]:
        """What a stage command prints once one build is done."""
        return []

    def warnings(self, build: "Build", result: Any) -> list[str]:
        """Lines for standard error once one build is done (a failed quality gate)."""
        return []

    def after(self, results: list) -> list[str]:
        """Lines printed once every build of the command ran; `results` holds (build, result) pairs."""
        return []

    def published(self, build: "Build", result: Any) -> str | None:
        """Its line in `publish`'s log."""
        return f"  {self.name}: done"

    def exit_code(self, results: list) -> int:
        """The command's exit code once every build ran (evaluate: 1 when a quality gate failed)."""
        return 0


def run(stage: Stage, build: "Build", options: Options) -> Any:
    """Run one stage of one build, once every stage it needs is finished (the only place `needs` is checked)."""
    for need, why in stage.needs.items():
        build.require(need, why)
    return stage.run(build, options)
