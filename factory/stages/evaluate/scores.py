"""Base vs. quantized: recovery per task and metric, the mean recovery, and quality gates.

Recovery is quantized/base for accuracy-like metrics and base/quantized for perplexity-like
ones, so 1.0 means "kept everything" either way. The mean is over each task's primary metric
(a group's reported categories, MMLU's four, are inside the group's own figure and not counted again).
"""

from __future__ import annotations

from factory.recipe import Gate, Gates
from factory.recipe.tasks import is_reported_subtask, primary_metric


def _name_says_lower(metric: str) -> bool:
    # Only for a metric whose harness declared no direction (lm-eval declares one per metric).
    return "perplexity" in metric or metric in ("bits_per_byte", "ppl")


def compare(base: dict[str, dict[str, float]], quantized: dict[str, dict[str, float]],
            higher_is_better: dict[str, dict[str, bool]]) -> dict:
    """Recovery per task and metric; `higher_is_better` is the harness's own declaration."""
    tasks: dict[str, dict] = {}
    primary_recoveries = []
    for task, metrics in quantized.items():
        primary = primary_metric(metrics)
        for metric, value in metrics.items():
            reference = base.get(task, {}).get(metric)
            declared = higher_is_better.get(task, {}).get(metric)
            higher = declared if declared is not None else not _name_says_lower(metric)
            recovery = None
            if reference is not None:
                if higher:
                    recovery = value / reference if reference else None
                else:
                    recovery = reference / value if value else None
            row = {"base": reference, "quantized": value, "recovery": recovery, "higher_is_better": higher,
                   "primary": metric == primary}
            tasks.setdefault(task, {})[metric] = row
            if metric == primary and recovery is not None and not is_reported_subtask(task):
                primary_recoveries.append(recovery)
    mean = sum(primary_recoveries) / len(primary_recoveries) if primary_recoveries else None
    return {"tasks": tasks, "mean_recovery": mean}


def check_gates(scores: dict, gates: Gates | None) -> list[str]:
    """One line per failed gate; empty when every gate holds (or there are none)."""
    if gates is None:
        return []
    failures = []
    mean = scores.get("mean_recovery")
    if gates.min_recovery is not None and mean is not None and mean < gates.min_recovery:
        failures.append(f"gate min_recovery: mean recovery {mean:.3f} < {gates.min_recovery}")
    for task, metrics in scores["tasks"].items():
        own: Gate | None = gates.tasks.get(task)
        for metric, row in metrics.items():
            if not row["primary"] or row["recovery"] is None:
                continue
            min_recovery = own.min_recovery if own else None
            max_ratio = own.max_ppl_ratio if own and own.max_ppl_ratio is not None else gates.max_ppl_ratio
            if min_recovery is not None and row["recovery"] < min_recovery:
                failures.append(f"gate {task}.min_recovery: {metric} recovery {row['recovery']:.3f} < {min_recovery}")
            if max_ratio is not None and not row["higher_is_better"]:
                ratio = row["quantized"] / row["base"]
                if ratio > max_ratio:
                    failures.append(f"gate {task}.max_ppl_ratio: {metric} {row['quantized']:.3f} is "
                                    f"{ratio:.3f}x the base's {row['base']:.3f} > {max_ratio}")
    return failures
