"""What to evaluate for one build: the suite's tasks, the perplexity sets and the harness settings."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from factory.core.paths import EVAL_TASKS_DIR
from factory.recipe.tasks import bundled_tasks, suite, suite_fewshot

if TYPE_CHECKING:
    from factory.recipe.evaluation import Evaluation

TASKS_DIR = EVAL_TASKS_DIR

BUNDLED_TASKS = bundled_tasks()


@dataclass(frozen=True)
class EvalPlan:
    kind: str
    harness: str  # lm-eval or lmms-eval
    tasks: tuple[str, ...]
    perplexity: tuple[str, ...]
    perplexity_seq_len: int
    backend: str
    batch_size: int | str
    limit: int | None
    num_fewshot: int
    seed: int
    task_fewshot: tuple[tuple[str, int], ...] = ()  # tasks run with other few-shot counts (the suite's protocol)

    @classmethod
    def for_model(cls, evaluation: "Evaluation", kind: str) -> "EvalPlan":
        tasks, ppl = suite(evaluation.suite, kind)
        tasks = tuple(evaluation.tasks if evaluation.tasks is not None else tasks)
        shots = {} if evaluation.num_fewshot is not None else suite_fewshot(evaluation.suite, kind)
        return cls(
            kind=kind,
            harness="lmms-eval" if kind == "llava-next" else "lm-eval",
            tasks=tasks,
            perplexity=tuple(evaluation.perplexity if evaluation.perplexity is not None else ppl),
            perplexity_seq_len=evaluation.perplexity_seq_len,
            backend=evaluation.backend,
            batch_size=evaluation.batch_size,
            limit=evaluation.limit,
            num_fewshot=evaluation.num_fewshot or 0,
            seed=evaluation.seed,
            task_fewshot=tuple(sorted((t, n) for t, n in shots.items() if t in tasks)),
        )

    def fewshot_groups(self) -> dict[int, list[str]]:
        """{shots: tasks}: one harness pass per few-shot count, tasks in the plan's order."""
        own = dict(self.task_fewshot)
        groups: dict[int, list[str]] = {}
        for task in self.tasks:
            groups.setdefault(own.get(task, self.num_fewshot), []).append(task)
        return groups

    def settings(self) -> dict:
        """Everything that changes the figures: the plan and the harness's version."""
        plan = asdict(self)
        if not plan["task_fewshot"]:
            del plan["task_fewshot"]  # plans without per-task counts keep the keys they had before the field
        return {**plan, "harness_version": harness_version(self.harness),
                "bundled_tasks_digest": bundled_tasks_digest() if BUNDLED_TASKS & set(self.tasks) else None}

    def key(self) -> str:
        blob = json.dumps(self.settings(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def harness_version(harness: str) -> str:
    package = {"lm-eval": "lm_eval", "lmms-eval": "lmms_eval"}[harness]
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def bundled_tasks_digest() -> str:
    h = hashlib.sha256()
    for f in sorted(TASKS_DIR.iterdir()):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]
