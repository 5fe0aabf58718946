"""The paper's tables (Huang et al. 2024) in our figures: their columns, a cell (ours / the paper's
(difference)), and a build's row. The report (factory.fleet.report) lays whole tables out of these; the
card quotes its build's row (paper_cells), so both print the same cells.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field

from factory.recipe.paper import COLUMNS, PAPER_MODELS, PTQ_TABLE, lora_ft_rows, paper_rows
from factory.stages.figures import BuildFigures, primary


@dataclass(frozen=True)
class Column:
    key: str  # the cell's column in report.csv / report.json
    label: str  # the table's heading
    task: str | None  # the evaluation task it reads (None: computed, e.g. the average)
    paper_key: str | None = None  # the paper table's column
    percent: bool = False  # an accuracy, shown as the paper prints it (x100)


# Table 1: perplexity on three sets, then the zero-shot tasks and their average.
PTQ_COLUMNS = (
    Column("wikitext2_ppl", "WikiText2 ppl", "wikitext2_ppl", "wikitext2_ppl"),
    Column("c4_ppl", "C4 ppl", "c4_ppl", "c4_ppl"),
    Column("ptb_ppl", "PTB ppl", "ptb_ppl", "ptb_ppl"),
    Column("piqa", "PIQA", "piqa", "piqa", True),
    Column("arc_e", "ARC-e", "arc_easy", "arc_e", True),
    Column("arc_c", "ARC-c", "arc_challenge", "arc_c", True),
    Column("hellaswag", "HellaSwag", "hellaswag", "hellaswag", True),
    Column("winogrande", "Winogrande", "winogrande", "winogrande", True),
    Column("avg", "Avg.", None, "avg", True),
)
# The LoRA-FT table: MMLU by category (5-shot), its average, the zero-shot tasks and their average.
LORA_FT_COLUMNS = (
    Column("mmlu_humanities", "MMLU Hums.", "mmlu_humanities", "mmlu_humanities", True),
    Column("mmlu_stem", "MMLU STEM", "mmlu_stem", "mmlu_stem", True),
    Column("mmlu_social", "MMLU Social", "mmlu_social_sciences", "mmlu_social", True),
    Column("mmlu_other", "MMLU Other", "mmlu_other", "mmlu_other", True),
    Column("mmlu_avg", "MMLU Avg.", "mmlu", "mmlu_avg", True),
    *PTQ_COLUMNS[3:],
)
AVERAGED = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande")  # the paper's "Avg." column


@dataclass
class Cell:
    table: str
    base_model: str
    row: str
    column: str
    ours: float | None
    paper: float | None = None
    diff: float | None = None
    unit: str = ""
    label: str = ""
    recipe: str | None = None
    method: str | None = None
    bits: int | None = None
    group_size: int | str | None = None
    source: str | None = None
    repo_id: str | None = None
    commit: str | None = None


@dataclass
class Table:
    kind: str  # ptq | lora-ft | multimodal
    title: str
    base_model: str
    columns: list[Column]
    rows: list[dict] = field(default_factory=list)  # {"name", "label", "cells": {key: Cell}, "extra": {...}}


# ---------------------------------------------------------------- our figures, the paper's, cells


def scores_figures(table: Table, scores: dict, which: str) -> dict[str, tuple[float | None, str]]:
    """{column key: (value, metric)} of one evaluation; `which`: 'quantized' (the build) or 'base'."""
    out: dict[str, tuple[float | None, str]] = {}
    for column in table.columns:
        if column.task is None:
            continue
        row = primary(scores, column.task)
        value = None if row is None else row.get(which)
        out[column.key] = (None if value is None else value * (100 if column.percent else 1),
                           row["metric"] if row else "")
    if any(c.key == "avg" for c in table.columns):
        accs = [out[c.key][0] for c in table.columns if c.task in AVERAGED]
        out["avg"] = (sum(accs) / len(accs) if accs and None not in accs else None, "acc")
    return out


def row_cells(table: Table, name: str, figures: dict, paper: dict | None, label: str, build: BuildFigures | None,
              source: str | None) -> dict[str, Cell]:
    """One row's cells: our figure per column, beside the paper's where `paper` (its row) has one."""
    cells = {}
    for column in table.columns:
        ours, metric = figures.get(column.key, (None, ""))
        theirs = (paper or {}).get(column.paper_key) if column.paper_key else None
        cells[column.key] = Cell(
            table.kind, table.base_model, name, column.key, ours, theirs,
            None if ours is None or theirs is None else ours - theirs, _unit(column, metric), label,
            **(_build_fields(build) if build else {"source": source}))
    return cells


def _unit(column: Column, metric: str | None) -> str:
    return "%" if column.percent else (metric or "")


def _build_fields(build: BuildFigures) -> dict:
    return {"recipe": build.recipe, "method": build.method, "bits": build.bits, "group_size": build.group_size,
            "source": build.source, "repo_id": build.repo_id, "commit": build.commit}


def paper_fp16(table: Table, build: BuildFigures) -> dict | None:
    """The paper's FP16 row for the base-model row of `table` (whose builds include `build`)."""
    if table.kind == "lora-ft":
        return (lora_ft_rows(build.model, build.paper_name) or {}).get("FP16")
    if table.kind == "ptq":
        found = paper_rows(build.model, build.paper_name, build.paper_bits, build.group_size)
        if found:
            return found["FP16"]
        return _any_paper_fp16(build.model)
    return None


def _any_paper_fp16(model: str) -> dict | None:
    """The paper's FP16 row of a model it measured, whatever the method (for the base row)."""
    name = PAPER_MODELS.get(model)
    if name is None:
        return None
    with PTQ_TABLE.open() as f:
        for row in csv.DictReader(f):
            if row["model"] == name and row["method"] == "FP16":
                return {c: float(row[c]) for c in COLUMNS if row.get(c)}
    return None


def paper_row(table: Table, build: BuildFigures) -> dict | None:
    """The paper's row for the same model, method, bits and group size as `build`, None where it has none."""
    if table.kind == "lora-ft":
        return (lora_ft_rows(build.model, build.paper_name) or {}).get(build.paper_name)
    if table.kind == "ptq":
        found = paper_rows(build.model, build.paper_name, build.paper_bits, build.group_size)
        return next((v for k, v in found.items() if k != "FP16"), None) if found else None
    return None


def build_row(table: Table, build: BuildFigures) -> dict:
    """A build's row of `table`: the columns' cells, then its recovery, effective bits, size and speed."""
    name = f"{build.method} {build.scheme}"
    label = "; ".join(build.labels())
    cells = row_cells(table, name, scores_figures(table, build.scores, "quantized"), paper_row(table, build), label,
                      build, None)
    figures = {
        "mean_recovery": (build.mean_recovery, "recovery"),
        "effective_bits": (build.effective_bits, f"bits/weight ({build.effective_bits_source})"),
        "size_gb": (None if build.size_bytes is None else build.size_bytes / 1e9, "GB"),
        "decode_tokens_per_s": (build.decode_tokens_per_s, "tokens/s, batch 1"),
    }
    for key, (value, unit) in figures.items():
        cells[key] = Cell(table.kind, table.base_model, name, key, value, unit=unit, label=label,
                          **_build_fields(build))
    return {"name": name, "label": label, "cells": cells, "build": build}


def paper_cells(build: BuildFigures) -> list[str] | None:
    """This build's row of the paper's table (Table 1, or the LoRA-FT table), each cell as the report shows
    it (ours / paper (difference)); None where the paper has no row for the setting. The card quotes it."""
    kind, columns = ("lora-ft", LORA_FT_COLUMNS) if build.finetune else ("ptq", PTQ_COLUMNS)
    table = Table(kind, "", build.model, list(columns))
    if build.kind == "llava-next" or paper_row(table, build) is None:
        return None
    row = build_row(table, build)
    return [cell_text(row["cells"][c.key]) for c in columns]


# ---------------------------------------------------------------- a cell as text


def number(value: float | None, unit: str = "", like: float | None = None) -> str:
    """A figure as the table shows it; `like`: format with the precision of this figure (a difference
    printed as its two figures are)."""
    if value is None:
        return "-"
    if unit == "%":
        return f"{value:.1f}"
    magnitude = abs(value if like is None else like)
    if magnitude >= 1e5:
        return f"{value:.3g}"
    if magnitude >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if magnitude >= 1 else f"{value:.3f}"


def cell_text(cell: Cell) -> str:
    ours = number(cell.ours, cell.unit)
    if cell.paper is None:
        return ours
    sign = "+" if (cell.diff or 0) >= 0 else "-"
    scale = max(abs(cell.ours), abs(cell.paper)) if cell.ours is not None else None
    diff = "" if cell.diff is None else f" ({sign}{number(abs(cell.diff), cell.unit, like=scale)})"
    return f"{ours} / {number(cell.paper, cell.unit)}{diff}"
