"""EleutherAI lm-evaluation-harness through its Python API (`lm_eval.simple_evaluate`)."""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from factory.core.errors import UserError, first_line
from factory.engines.loading import compute_dtype
from factory.recipe.eval_plan import BUNDLED_TASKS, TASKS_DIR, EvalPlan
from factory.recipe.tasks import reported_tasks

RAW_FILE = "lm_eval_results.json"


def bundled_task_config(name: str) -> dict:
    """A bundled task YAML with its data files resolved against the tasks folder."""
    config = yaml.safe_load((TASKS_DIR / f"{name}.yaml").read_text())
    files = config.get("dataset_kwargs", {}).get("data_files", {})
    config["dataset_kwargs"]["data_files"] = {split: str(TASKS_DIR / f) for split, f in files.items()}
    return config


@functools.cache
def _task_index():
    """lm-eval's TaskManager indexes its ~15,000 task files when built (6 s on 2 cores): once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def task_manager(metadata: dict):
    """The indexed TaskManager with `metadata` for the tasks it builds, as simple_evaluate would make it
    (it passes the model args). In lm-eval 0.4.13 only the TaskFactory carries metadata; the index is shared."""
    from lm_eval.tasks._factory import TaskFactory

    manager = copy.copy(_task_index())
    manager.metadata = metadata
    manager._factory = TaskFactory(meta=metadata)
    return manager


def check_tasks(tasks: tuple[str, ...]) -> None:
    """Unknown task names fail before any model loads."""
    if all(t in BUNDLED_TASKS for t in tasks):
        return
    known = set(_task_index().all_tasks)
    unknown = [t for t in tasks if t not in BUNDLED_TASKS and t not in known]
    if unknown:
        raise UserError(f"evaluation.tasks: unknown lm-eval task {unknown[0]!r}")


def run(plan: EvalPlan, artifact, out_dir: Path, device: str, placement=None) -> "Measured":
    """Evaluate the build's artifact; write the harness's output to out_dir; return its figures.

    One harness pass per few-shot count (the paper suite: MMLU 5-shot, the rest 0-shot), all on one
    loaded model; the passes' outputs are merged into one raw file."""
    import lm_eval

    if plan.backend == "vllm":
        model, args = "vllm", {**artifact.harness_model_args(), "dtype": "auto", "seed": plan.seed}
        if placement is not None and placement.gpus > 1:
            args["tensor_parallel_size"] = placement.gpus
    else:
        model, args = "hf", {**artifact.harness_model_args(), "dtype": compute_dtype(),
                             **(placement.hf_model_args() if placement is not None else {})}
    passes = plan.fewshot_groups()
    try:
        if len(passes) > 1:  # load once, hand the harness the model object for each pass
            from lm_eval.api.registry import get_model

            model = get_model(model).create_from_arg_obj(
                args, {"batch_size": plan.batch_size, "device": device})
        outputs = [lm_eval.simple_evaluate(
            model=model, model_args=args, tasks=[bundled_task_config(t) if t in BUNDLED_TASKS else t for t in tasks],
            task_manager=task_manager(dict(args)), num_fewshot=shots,
            batch_size=plan.batch_size, device=device, limit=plan.limit, log_samples=False,
            random_seed=plan.seed, numpy_random_seed=plan.seed, torch_random_seed=plan.seed,
            fewshot_random_seed=plan.seed, bootstrap_iters=1000,
        ) for shots, tasks in passes.items()]
    except (ConnectionError, OSError) as exc:
        raise dataset_unavailable(exc) from None
    results = merge(outputs)
    (out_dir / RAW_FILE).write_text(json.dumps(results, indent=2, default=str))
    reported = reported_tasks(plan.tasks)
    metrics = {t: m for t, m in flatten(results).items() if t in reported}
    declared = {t: d for t, d in directions(results).items() if t in reported}
    return Measured(metrics, declared, str(results.get("config", {}).get("model_dtype") or "auto"))


def merge(outputs: list[dict]) -> dict:
    """The harness outputs of several passes as one: per-task sections joined, the first pass's config."""
    if len(outputs) == 1:
        return outputs[0]
    merged = dict(outputs[0])
    for section in ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                    "n-samples"):
        joined: dict = {}
        for output in outputs:
            joined.update(output.get(section) or {})
        merged[section] = joined
    return merged


@dataclass
class Measured:
    """What one harness run gives: {task: {metric: value}}, each metric's direction as the harness
    declares it, and the dtype the harness loaded the model in."""

    metrics: dict[str, dict[str, float]]
    higher_is_better: dict[str, dict[str, bool]]
    dtype: str


def directions(results: dict) -> dict[str, dict[str, bool]]:
    """The harness's own `higher_is_better` per task and metric (filters stripped, as in flatten)."""
    out: dict[str, dict[str, bool]] = {}
    for task, metrics in (results.get("higher_is_better") or {}).items():
        for key, higher in (metrics or {}).items():
            if isinstance(higher, bool):
                out.setdefault(task, {})[key.partition(",")[0]] = higher
    return out


def dataset_unavailable(exc: Exception) -> UserError:
    """The harnesses raise connection/OS errors when a task's dataset cannot be fetched."""
    first = first_line(exc)[:160]
    return UserError(f"evaluation: a task's dataset is not available ({type(exc).__name__}: {first}); "
                     "offline, use suite: smoke")


def flatten(results: dict) -> dict[str, dict[str, float]]:
    """{'arc_easy': {'acc,none': 0.8, 'acc_stderr,none': ...}} -> {'arc_easy': {'acc': 0.8}}; groups too."""
    flat: dict[str, dict[str, float]] = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not isinstance(value, (int, float)) or "_stderr" in metric or metric == "sample_len":
                continue
            flat.setdefault(task, {})[metric if filt in ("none", "") else f"{metric},{filt}"] = float(value)
    return flat
