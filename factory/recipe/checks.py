"""The rules of a recipe that pydantic cannot express: the method's own checks, combinations of fields,
files the recipe names, the shapes of its models' layers, the repo ids it publishes to."""

from __future__ import annotations

import re
from pathlib import Path

from factory.engines.base_models import local_linear_shapes, local_text_config
from factory.engines.lora.data import check_file
from factory.recipe.fields import MAX_BATCH_SIZE
from factory.recipe.naming import hub_repo_id_problem
from factory.recipe.publish_repo import repo_id_problem
from factory.recipe.schema import Recipe, block_field
from factory.recipe.tasks import suite
from factory.registry import get_method, method_names


def check_recipe(recipe: Recipe, base_dir: Path, check_model_configs: bool = True) -> list[tuple[tuple, str]]:
    """The rules pydantic cannot express: the method's own checks, combinations of fields, files, model shapes."""
    m = recipe.method
    method = get_method(m)
    out: list[tuple[tuple, str]] = list(method.check(recipe))
    for other in method_names():
        if other != m and getattr(recipe, block_field(other), None) is not None:
            out.append(((other,), f"only applies to method {other}, not {m}"))

    ft = recipe.finetune
    if ft is not None and not method.takes_finetune:
        out.append((("finetune",), f"only applies to LoRA fine-tuning methods, not {m}"))
    if ft is not None and method.takes_finetune:
        if ft.data.source == "file":
            if not ft.data.path:
                out.append((("finetune", "data", "path"), "required with source: file"))
            elif not (base_dir / ft.data.path).is_file():
                out.append((("finetune", "data", "path"), f"no such file: {ft.data.path}"))
            elif not ft.data.path.endswith((".json", ".jsonl")):
                out.append((("finetune", "data", "path"), "must be an Alpaca-format .json or .jsonl file"))
            else:
                problem = check_file(base_dir / ft.data.path)
                if problem:
                    out.append((("finetune", "data", "path"), f"{ft.data.path} is not Alpaca-format: {problem}"))
        elif ft.data.path:
            out.append((("finetune", "data", "path"), f"only used with source: file, not {ft.data.source}"))
        if ft.max_steps is not None and ft.epochs is not None:
            out.append((("finetune", "epochs"), "give max_steps or epochs, not both"))

    cal = recipe.calibration
    if method.uses_calibration(recipe.method_options):
        if cal.source == "file":
            if not cal.path:
                out.append((("calibration", "path"), "required with source: file"))
            elif not (base_dir / cal.path).is_file():
                out.append((("calibration", "path"), f"no such file: {cal.path}"))
            elif not cal.path.endswith((".txt", ".jsonl", ".md")):
                out.append((("calibration", "path"), "must be a .txt, .md or .jsonl file"))
    if cal.path and cal.source != "file":
        out.append((("calibration", "path"), f"only used with source: file, not {cal.source}"))

    ev = recipe.evaluation
    if isinstance(ev.batch_size, int) and not 0 < ev.batch_size <= MAX_BATCH_SIZE:
        out.append((("evaluation", "batch_size"), f"must be from 1 to {MAX_BATCH_SIZE} (or 'auto')"))
    if ev.gates is not None and ev.gates.tasks:
        measured: set[str] = set()
        for entry in recipe.models:
            tasks, perplexity = suite(ev.suite, entry.kind)
            tasks = ev.tasks if ev.tasks is not None else tasks
            perplexity = ev.perplexity if ev.perplexity is not None else perplexity
            measured |= set(tasks) | {f"{name}_ppl" for name in perplexity}
        for task in ev.gates.tasks:
            if task not in measured:
                out.append((("evaluation", "gates", "tasks", task),
                            f"not a measured task (measured: {', '.join(sorted(measured))})"))

    seen: set[str] = set()
    for i, entry in enumerate(recipe.models):
        here = ("models", i)
        if entry.id in seen:
            out.append(((*here, "id"), f"{entry.id} is listed twice"))
        seen.add(entry.id)
        if entry.source == "local":
            if not entry.path:
                out.append(((*here, "path"), "required with source: local"))
            elif not (base_dir / entry.path).is_dir():
                out.append(((*here, "path"), f"no such directory: {entry.path}"))
        elif entry.path:
            out.append(((*here, "path"), f"only used with source: local, not {entry.source}"))
        if entry.source == "hub" and not re.fullmatch(r"[\w.-]+/[\w.-]+", entry.id):
            out.append(((*here, "id"), f"{entry.id!r} is not a Hub model id (org/name)"))
        o = entry.overrides
        group = recipe.effective(entry).group_size
        if check_model_configs and isinstance(group, int) and group > 0 and method.checks_group_divisibility():
            config = local_text_config(entry, base_dir)
            if config is not None:
                field = (*here, "overrides", "group_size") if o.group_size is not None else ("weights", "group_size")
                for name, size in config.items():
                    if size % group:
                        out.append((field, f"{group} does not divide {entry.id}'s {name} ({size})"))
                        break
        if check_model_configs:
            shapes = local_linear_shapes(entry, base_dir)
            problem = method.layer_shape_problem(recipe.effective(entry), *shapes) if shapes else None
            if problem:
                out.append((("method",), f"{problem} ({entry.id})"))
        problem = repo_id_problem(recipe, entry, recipe.publish.org or "org")
        if problem:
            out.append((("publish", "repo"), problem))
    if recipe.publish.base_evals is not None:
        problem = hub_repo_id_problem(recipe.publish.base_evals)
        if problem:
            out.append((("publish", "base_evals"), problem))
    if recipe.publish.report is not None:
        problem = hub_repo_id_problem(recipe.publish.report)
        if problem:
            out.append((("publish", "report"), problem))
    return out
