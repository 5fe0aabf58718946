"""`factory report`: every build of a set of recipes in one study, the paper's figures beside ours.

What it reads: for each (recipe, model), the build's evaluation (scores.json), its speed measurement
(speed.json) and its artifact record (size, effective bits), from the local build folder or, with
`--from-hub`, from the published repo (only those small files: factory.fleet.report_sources). What it writes,
into one folder, complete or not at all: README.md (the tables and plots), report.csv and report.json
(every cell shown, with its label and source), and the plots as PNG (factory.fleet.report_plots).

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

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from factory.recipe.paper import CITATION, lora_ft_rows
from factory.recipe.tasks import display_name, is_reported_subtask
from factory.stages.figures import BuildFigures, bits_of
from factory.stages.paper_table import (AVERAGED, LORA_FT_COLUMNS, PTQ_COLUMNS, Cell, Column, Table, build_row,
                                        cell_text, number, paper_fp16, row_cells, scores_figures)

REPORT_FORMAT = "factory-report/1"
README = "README.md"
CSV_FILE = "report.csv"
JSON_FILE = "report.json"


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


# ---------------------------------------------------------------- rendering


CSV_FIELDS = ("table", "base_model", "row", "column", "ours", "paper", "diff", "unit", "label", "recipe", "method",
              "bits", "group_size", "source", "repo_id", "commit")


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for cell in report.cells():
        writer.writerow({k: ("" if v is None else _plain(v)) for k, v in asdict(cell).items()})
    return out.getvalue()


def _plain(value):
    return repr(value) if isinstance(value, float) else value


def to_json(report: Report) -> str:
    data = {
        "format": REPORT_FORMAT,
        "builds": [{"source": b.source, "repo_id": b.repo_id, "commit": b.commit, "recipe": b.recipe,
                    "model": b.model, "kind": b.kind, "method": b.method, "bits": b.bits, "group_size": b.group_size,
                    "scheme": b.scheme, "output_format": b.output_format, "smoke": b.smoke, "simulated": b.simulated,
                    "eval_runtime": b.eval_runtime, "speed_runtime": b.speed_runtime,
                    "mean_recovery": b.mean_recovery, "effective_bits": b.effective_bits,
                    "effective_bits_source": b.effective_bits_source, "size_bytes": b.size_bytes,
                    "decode_tokens_per_s": b.decode_tokens_per_s} for b in report.builds],
        "cells": [asdict(c) for c in report.cells()],
        "left_out": [asdict(x) for x in report.left_out],
        "plots": report.plots,
    }
    return json.dumps(_json_safe(data), indent=1, sort_keys=True, allow_nan=False, default=str) + "\n"


def _json_safe(value):
    """A perplexity can be infinite (a collapsed build): JSON has no such number, so it is written "inf"."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(report: Report, title: str = "factory report") -> str:
    lines = [f"# {title}", "",
             "Every build of these recipes in one table per base model, in the shape of Huang et al. 2024 "
             "(arXiv 2404.14047). A cell with two figures is **ours / the paper's (ours - paper)**, shown where "
             "the paper measured the same model, method, bits and group size. Accuracies are in percent, "
             "as the paper prints them. Every figure is also in `report.csv` and `report.json`, with its label "
             "and source.", ""]
    if not report.tables:
        lines += ["No evaluated build was found.", ""]
    models = list(dict.fromkeys(t.base_model for t in report.tables))
    for model in models:
        lines += [f"## {model}", ""]
        for table in (t for t in report.tables if t.base_model == model):
            lines += [f"### {table.title}", "", *_table_lines(table), ""]
        for plot in report.plots.get(model, []):
            lines += [f"![{plot}]({plot})", ""]
    lines += _footer(report)
    return "\n".join(lines).rstrip() + "\n"


def _table_lines(table: Table) -> list[str]:
    head = ["build", *[c.label for c in table.columns], "mean recovery", "eff. bits", "size", "decode tok/s",
            "what the figures are"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 2) + " --- |"]
    for row in table.rows:
        cells = row["cells"]
        build: BuildFigures | None = row["build"]
        text = [_md(row["name"]), *[cell_text(cells[c.key]) for c in table.columns]]
        if build is None:
            text += ["-", "-", "-", "-"]
        else:
            bits = cells["effective_bits"].ours
            text += [number(build.mean_recovery),
                     "-" if bits is None else f"{bits:.2f}" + ("" if build.effective_bits_source == "counted"
                                                                else f" ({build.effective_bits_source})"),
                     "-" if build.size_bytes is None else _size(build.size_bytes),
                     number(build.decode_tokens_per_s)]
        text.append(_md(row["label"]) or "benchmark")
        lines.append("| " + " | ".join(text) + " |")
    return lines


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def _footer(report: Report) -> list[str]:
    lines = ["## Notes", "",
             "- **smoke**: scored on the small sets bundled with the factory: they show that a build works and how "
             "methods order, not how a model scores on the benchmark.",
             "- **simulated**: fake-quantized weights stored at full size (as the paper evaluates these methods): "
             "no memory saving.",
             "- **eval: / speed:**: the runtime the evaluation and the speed measurement ran in (a runtime that "
             "decompresses the weights says so).",
             "- **eff. bits**: storage bits per quantized weight, scales and kept weights included, as the build's "
             "manifest counts them; *nominal* where it does not (the bits plus one 16-bit scale per group); "
             "*file size* for GGUF files (their bytes against the 16-bit base checkpoint's).",
             "- **decode tok/s**: batch size 1, where the build's speed was measured.", ""]
    for heading, items in (("Left out: unreadable", [x for x in report.left_out if x.bad]),
                           ("Not built or not published yet", [x for x in report.left_out if not x.bad])):
        if items:
            lines += [f"### {heading}", ""]
            lines += [f"- `{_md(x.source)}`: {_md(x.reason)}" for x in items]
            lines.append("")
    lines += ["### Citation", "", "```bibtex", CITATION, "```", ""]
    return lines


# ---------------------------------------------------------------- writing


def content_fingerprint(files: dict[str, bytes]) -> str:
    """A digest of every file of the report: what `--push` compares to say 'unchanged'."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()[:16]


def front_matter(fingerprint: str, models: list[str]) -> str:
    import yaml

    data = {"tags": ["factory", "factory-report", "quantized"], "factory": {"report": True,
                                                                            "fingerprint": fingerprint,
                                                                            "base_models": models}}
    return "---\n" + yaml.safe_dump(data, sort_keys=False) + "---\n\n"


def write(report: Report, out: Path, title: str = "factory report") -> dict[str, Path]:
    """Render the whole report (plots, CSV, JSON, README) aside, then swap it into `out` in one step:
    a reader (or a push) never sees half a report. Returns {file name: path}."""
    from factory.core.atomic import atomic_dir
    from factory.fleet.report_plots import write_plots

    with atomic_dir(out) as partial:
        write_plots(report, partial)
        (partial / CSV_FILE).write_text(to_csv(report), encoding="utf-8")
        (partial / JSON_FILE).write_text(to_json(report), encoding="utf-8")
        body = markdown(report, title)
        files = {p.name: p.read_bytes() for p in partial.iterdir() if p.is_file()}
        files[README] = body.encode()
        models = list(dict.fromkeys(t.base_model for t in report.tables))
        (partial / README).write_text(front_matter(content_fingerprint(files), models) + body, encoding="utf-8")
    return {p.name: p for p in sorted(out.iterdir()) if p.is_file()}
