"""Evaluation suites, bundled tasks, headline metrics and display names, from factory/data/tasks.yaml."""

from __future__ import annotations

import functools

import yaml

from factory.core.paths import DATA_DIR

TASKS_FILE = DATA_DIR / "tasks.yaml"


@functools.cache
def _data() -> dict:
    return yaml.safe_load(TASKS_FILE.read_text(encoding="utf-8"))


def suite(name: str, kind: str) -> tuple[list[str], list[str]]:
    """(harness tasks, perplexity datasets) of a suite for a model kind."""
    entry = _data()["suites"][name][kind]
    return list(entry["tasks"]), list(entry["perplexity"])


def suite_fewshot(name: str, kind: str) -> dict[str, int]:
    """Tasks the suite's protocol runs with few-shot examples ({task: shots}); the others run 0-shot."""
    return dict(_data()["suites"][name][kind].get("fewshot") or {})


def reported_tasks(tasks) -> set[str]:
    """The harness results a build reports: the tasks asked for, plus the subgroups listed for a group task
    (MMLU's four categories); the rest of a group's members stay in the harness's raw output only."""
    listed = _data()["reported_subtasks"]
    return set(tasks) | {sub for task in tasks for sub in listed.get(task, ())}


def is_reported_subtask(task: str) -> bool:
    """A group's category (MMLU humanities): shown, but not counted again in the mean recovery."""
    return any(task in subs for subs in _data()["reported_subtasks"].values())


def bundled_tasks() -> frozenset[str]:
    return frozenset(_data()["bundled"])


def primary_metric(metrics) -> str:
    for name in _data()["primary_metrics"]:
        if name in metrics:
            return name
    return sorted(metrics)[0]


def display_name(task: str) -> str:
    return _data()["display_names"].get(task, task)
