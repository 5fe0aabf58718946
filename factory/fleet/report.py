"""`factory report`: every build of a set of recipes in one study, the paper's figures beside ours.

What it reads: for each (recipe, model), the build's evaluation (scores.json), its speed measurement
(speed.json) and its artifact record (size, effective bits), from the local build folder or, with
`--from-hub`, from the published repo (only those small files: factory.fleet.report_sources). What it writes,
into one folder, complete or not at all: README.md (the tables and plots), report.csv and report.json
(every cell shown, with its label and source), and the plots as PNG (factory.fleet.report_files,
factory.fleet.report_markdown, factory.fleet.report_plots). This module is the report's model: its tables.

Tables, per base model, in the shape of Huang et al. 2024: Table 1 (post-training quantization: method x
bits, WikiText2/C4/PTB perplexity and the zero-shot tasks), the LoRA-FT table (MMLU's four categories) and
the multimodal table (LLaVA-Next builds). A cell holds our figure and, where the paper measured the same
model, method, bits and group size (factory/data/huang2024_*.csv), the paper's and the difference
(the columns, cells and a build's row: factory.stages.paper_table, which the card quotes too). Tasks
the paper has no column for (the bundled smoke sets) get columns of their own, without a paper figure.
Every row says what its figures are: smoke (bundled sets, not a benchmark), simulated (fake-quantized,
full-size weights) and the runtime the evaluation and the speed measurement ran in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from factory.recipe.paper import lora_ft_rows
from factory.recipe.tasks import display_name, is_reported_subtask
from factory.stages.figures import BuildFigures, bits_of
from factory.stages.paper_table import (AVERAGED, LORA_FT_COLUMNS, PTQ_COLUMNS, Cell, Column, Table, build_row,
                                        paper_fp16, row_cells, scores_figures)


@dataclass
class LeftOut:
    source: str
    reason: str
    bad: bool = False  # unreadable input (a truncated or foreign file), not just a build not made yet


@dataclass
class Report:
    tables: list[Table]
    builds: list[BuildFigures]
    left_out: list[LeftOut]
    plots: dict[str, list[str]] = field(default_factory=dict)  # base model -> PNG file names

    def cells(self) -> list[Cell]:
        return [cell for table in self.tables for row in table.rows for cell in row["cells"].values()]


def build_report(builds: list[BuildFigures], left_out: list[LeftOut]) -> Report:
    tables: list[Table] = []
    for model in sorted({b.model for b in builds}):
        mine = sorted((b for b in builds if b.model == model), key=lambda b: (bits_of(b), b.method, b.recipe))
        ptq = [b for b in mine if not b.finetune and b.kind != "llava-next"]
        lora = [b for b in mine if b.finetune and b.kind != "llava-next"]
        multimodal = [b for b in mine if b.kind == "llava-next"]
        if ptq:
            tables.append(_table("ptq", "Post-training quantization (the paper's Table 1)", model, ptq, PTQ_COLUMNS))
        if lora:
            tables.append(_table("lora-ft", "LoRA fine-tuning (the paper's LoRA-FT table)", model, lora,
                                 LORA_FT_COLUMNS))
        if multimodal:
            tables.append(_table("multimodal", "Multimodal (LLaVA-Next; the paper's table is not bundled, so no "
                                 "paper figures)", model, multimodal, ()))
    return Report(tables, builds, left_out)


def _table(kind: str, title: str, model: str, builds: list[BuildFigures], paper_columns) -> Table:
    tasks = [t for b in builds for t in b.scores["tasks"]]
    used = [c for c in paper_columns if c.task is None or c.task in tasks]
    if not any(c.task in tasks for c in used if c.task):
        used = []
    if used and not all(t in tasks for t in AVERAGED):
        used = [c for c in used if c.key != "avg"]
    claimed = {c.task for c in paper_columns if c.task}
    # Tasks the paper's table has no column for (the bundled smoke sets, the multimodal benchmarks).
    extra = [Column(task, display_name(task), task) for task in dict.fromkeys(tasks)
             if task not in claimed and not (kind != "lora-ft" and is_reported_subtask(task))]
    table = Table(kind, title, model, [*used, *extra])
    table.rows += _base_rows(table, builds)
    if kind == "lora-ft":
        table.rows += _nf4_rows(table, builds)
    for build in builds:
        table.rows.append(build_row(table, build))
    return table


def _base_rows(table: Table, builds: list[BuildFigures]) -> list[dict]:
    """The base model's own figures, once per evaluation plan the builds were measured with."""
    rows = []
    by_plan: dict[str, BuildFigures] = {}
    for build in builds:
        by_plan.setdefault(build.scores.get("base_evaluation") or "", build)
    paper = paper_fp16(table, builds[0])
    for plan, build in by_plan.items():
        name = "base model" + (f" (evaluation {plan[:8]})" if len(by_plan) > 1 and plan else "")
        label = "; ".join(["smoke"] if build.smoke else [])
        cells = row_cells(table, name, scores_figures(table, build.scores, "base"), paper, label, None,
                          f"base evaluation {plan}" if plan else None)
        rows.append({"name": name, "label": label, "cells": cells, "build": None})
    return rows


def _nf4_rows(table: Table, builds: list[BuildFigures]) -> list[dict]:
    """The LoRA-FT table's NormalFloat row: the base loaded as NF4 without fine-tuning, as measured."""
    build = next((b for b in builds if b.scores.get("nf4_reference")), None)
    if build is None:
        return []
    paper = lora_ft_rows(build.model, build.paper_name) or {}
    label = "smoke" if build.smoke else ""
    cells = row_cells(table, "NF4 base (no fine-tuning)",
                      scores_figures(table, build.scores["nf4_reference"], "quantized"),
                      paper.get("NormalFloat"), label, None, build.scores.get("nf4_reference_evaluation"))
    return [{"name": "NF4 base (no fine-tuning)", "label": label, "cells": cells, "build": None}]
