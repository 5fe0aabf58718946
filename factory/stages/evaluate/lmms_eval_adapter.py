"""lmms-eval (LLaVA-Next through its `llava_hf` model) via `lmms_eval.evaluator.simple_evaluate`.

lmms-eval is installed without its dependencies (see the Makefile): its requirements pull
torchvision, whose PyPI build does not load beside the CPU build of torch and which
`llava_hf` never uses; transformers' PIL image processor serves LLaVA-Next without it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
from pathlib import Path

from factory.core.atomic import atomic_dir
from factory.core.errors import UserError
from factory.core.paths import cache_root
from factory.engines.loading import compute_dtype
from factory.recipe.eval_plan import TASKS_DIR, EvalPlan
from factory.stages.evaluate.lm_eval_adapter import Measured, dataset_unavailable, directions, flatten

LMMS_TASKS = TASKS_DIR / "lmms"
RAW_FILE = "lmms_eval_results.json"


def bundled_tasks_dir() -> Path:
    """lmms-eval reads task YAMLs from a folder and resolves data files against the working
    directory, so the bundled tasks are copied once into the cache with absolute data paths."""
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(LMMS_TASKS.iterdir()) if f.is_file()))
    target = cache_root() / "lmms-tasks" / digest.hexdigest()[:16]
    if target.is_dir():
        return target
    with atomic_dir(target) as partial:
        shutil.copytree(LMMS_TASKS, partial, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        for task_yaml in partial.glob("*.yaml"):  # text, not YAML: the files hold `!function` tags
            text = re.sub(r"(\s)(\S+\.jsonl)", lambda m: f"{m[1]}{target / m[2]}", task_yaml.read_text())
            task_yaml.write_text(text)
    return target


@functools.cache  # building it scans every task folder: once per process
def _task_manager():
    try:
        from lmms_eval.tasks import TaskManager
    except ImportError as exc:
        raise UserError(f"evaluation: lmms-eval is not installed ({exc}); run `make test` or see the README") from None
    return TaskManager(include_path=str(bundled_tasks_dir()))


def check_tasks(tasks: tuple[str, ...]) -> None:
    known = set(_task_manager().all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise UserError(f"evaluation.tasks: unknown lmms-eval task {unknown[0]!r}")


def run(plan: EvalPlan, artifact, out_dir: Path, device: str, placement=None) -> Measured:
    from lmms_eval.evaluator import simple_evaluate

    if not artifact.whole_checkpoint:
        raise UserError("evaluation: lmms-eval's llava_hf model loads whole checkpoints, not adapters")
    model_path = artifact.path
    processor_config = model_path / "processor_config.json"
    has_chat_template = (model_path / "chat_template.jinja").is_file() or (
        processor_config.is_file() and "chat_template" in json.loads(processor_config.read_text()))
    if plan.backend == "vllm":
        model, args = "vllm", f"model={model_path},dtype=auto"
        if placement is not None and placement.gpus > 1:
            args += f",tensor_parallel_size={placement.gpus}"
    else:
        # transformers 5 rejects llava_hf's default device_map ""; name the device (or "auto" to shard).
        device_map = "auto" if placement is not None and placement.device_map == "auto" else device
        model, args = "llava_hf", f"pretrained={model_path},dtype={compute_dtype()},device_map={device_map}"
    try:
        results = simple_evaluate(
            model=model, model_args=args,
            tasks=list(plan.tasks), task_manager=_task_manager(), batch_size=plan.batch_size, device=device,
            limit=plan.limit, num_fewshot=plan.num_fewshot, log_samples=False, bootstrap_iters=1000,
            random_seed=plan.seed, numpy_random_seed=plan.seed, torch_random_seed=plan.seed,
            force_simple=not has_chat_template,
        )
    except (ConnectionError, OSError) as exc:
        raise dataset_unavailable(exc) from None
    (out_dir / RAW_FILE).write_text(json.dumps(results, indent=2, default=str))
    return Measured(flatten(results), directions(results), str(results.get("config", {}).get("model_dtype") or "auto"))

