"""Evaluation suites, bundled tasks, headline metrics and display names, from factory/data/tasks.yaml."""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

TASKS_FILE = Path(__file__).resolve().parent / "data" / "tasks.yaml"


@functools.cache
def _data() -> dict:
    return yaml.safe_load(TASKS_FILE.read_text(encoding="utf-8"))


def suite(name: str, kind: str) -> tuple[list[str], list[str]]:
    """(harness tasks, perplexity datasets) of a suite for a model kind."""
    entry = _data()["suites"][name][kind]
    return list(entry["tasks"]), list(entry["perplexity"])


def bundled_tasks() -> frozenset[str]:
    return frozenset(_data()["bundled"])


def primary_metric(metrics) -> str:
    for name in _data()["primary_metrics"]:
        if name in metrics:
            return name
    return sorted(metrics)[0]


def display_name(task: str) -> str:
    return _data()["display_names"].get(task, task)
