"""`factory report`: every build of a set of recipes in one study, the paper's figures beside ours.

What it reads: for each (recipe, model), the build's evaluation (scores.json), its speed measurement
(speed.json) and its artifact record (size, effective bits), from the local build folder or, with
`--from-hub`, from the published repo (only those small files: factory.fleet.report_sources). What it writes,
into one folder, complete or not at all (factory.core.atomic): README.md (the tables and plots), report.csv
and report.json (every cell shown, with its label and source), and the plots as PNG (factory.fleet.report_plots).

Tables, per base model, in the shape of Huang et al. 2024: Table 1 (post-training quantization: method x
bits, WikiText2/C4/PTB perplexity and the zero-shot tasks), the LoRA-FT table (MMLU's four categories) and
the multimodal table (LLaVA-Next builds). A cell holds our figure and, where the paper measured the same
model, method, bits and group size (factory/data/huang2024_*.csv), the paper's and the difference. Tasks
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

from factory.recipe.paper import CITATION, PAPER_MODELS, lora_ft_rows, paper_rows
from factory.recipe.tasks import display_name, primary_metric

REPORT_FORMAT = "factory-report/1"
README = "README.md"
CSV_FILE = "report.csv"
JSON_FILE = "report.json"


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
class BuildFigures:
    """One evaluated build, as the report reads it (from a build folder or a published repo)."""

    source: str  # the build folder (relative to the workdir) or the repo id it was read from
    commit: str | None
    repo_id: str | None
    recipe: str
    model: str
    kind: str
    method: str
    paper_name: str | None
    paper_bits: str
    bits: int
    group_size: int | str
    scheme: str
    output_format: str
    finetune: bool
    scores: dict
    speed: dict | None
    size_bytes: int | None
    effective_bits: float | None
    effective_bits_source: str  # counted | nominal | file size (the method says)

    @property
    def smoke(self) -> bool:
        return bool(self.scores.get("smoke"))

    @property
    def simulated(self) -> bool:
        return self.output_format == "simulated"

    @property
    def eval_runtime(self) -> str | None:
        harness = self.scores.get("harness") or {}
        return harness.get("loaded_as") or harness.get("placement")

    @property
    def speed_runtime(self) -> str | None:
        return (self.speed or {}).get("runtime") if self.speed else None

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Decode speed at batch size 1 (the single-user figure), where it was measured."""
        for batch in ((self.speed or {}).get("build") or {}).get("batches", []):
            if batch.get("batch_size") == 1:
                return batch.get("decode_tokens_per_s")
        return None

    @property
    def mean_recovery(self) -> float | None:
        return self.scores.get("mean_recovery")

    def labels(self) -> list[str]:
        out = []
        if self.smoke:
            out.append("smoke")
        if self.simulated:
            out.append("simulated")
        if self.eval_runtime:
            out.append(f"eval: {self.eval_runtime}")
        if self.speed_runtime:
            out.append(f"speed: {self.speed_runtime}")
        return out


@dataclass
class LeftOut:
    source: str
    reason: str
    bad: bool = False  # unreadable input (a truncated or foreign file), not just a build not made yet


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


@dataclass
class Report:
    tables: list[Table]
    builds: list[BuildFigures]
    left_out: list[LeftOut]
    plots: dict[str, list[str]] = field(default_factory=dict)  # base model -> PNG file names

    def cells(self) -> list[Cell]:
        return [cell for table in self.tables for row in table.rows for cell in row["cells"].values()]


# ---------------------------------------------------------------- reading one evaluation


def check_scores(data, where: str) -> str | None:
    """Why `data` (a parsed scores.json) is not a factory evaluation, or None when it is."""
    if not isinstance(data, dict):
        return f"{where}: not a factory evaluation (a JSON {type(data).__name__}, not an object)"
    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        return f"{where}: not a factory evaluation (no 'tasks' scores)"
    for task, metrics in tasks.items():
        if not isinstance(metrics, dict) or not all(
                isinstance(row, dict) and "quantized" in row and "primary" in row for row in metrics.values()):
            return f"{where}: not a factory evaluation (task {task!r} has no base/quantized figures)"
    return None


def parse_scores(text: str, where: str) -> tuple[dict | None, str | None]:
    """(scores, None) or (None, the one line saying what is wrong with `where`)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        return None, f"{where}: not valid JSON (truncated?): {exc.msg} at line {exc.lineno}"
    problem = check_scores(data, where)
    return (None, problem) if problem else (data, None)


def primary(scores: dict, task: str) -> dict | None:
    """The primary metric's row of a task ({"base", "quantized", "recovery", ...}), None when not measured."""
    metrics = (scores.get("tasks") or {}).get(task)
    if not metrics:
        return None
    name = next((m for m, row in metrics.items() if row.get("primary")), None) or primary_metric(metrics)
    return {"metric": name, **metrics[name]}


# ---------------------------------------------------------------- building the tables


def build_report(builds: list[BuildFigures], left_out: list[LeftOut]) -> Report:
    tables: list[Table] = []
    for model in sorted({b.model for b in builds}):
        mine = sorted((b for b in builds if b.model == model), key=lambda b: (_sort_bits(b), b.method, b.recipe))
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


def _sort_bits(build: BuildFigures) -> float:
    try:
        return float(build.paper_bits)
    except (TypeError, ValueError):
        return float(build.bits)


def _table(kind: str, title: str, model: str, builds: list[BuildFigures], paper_columns) -> Table:
    tasks = [t for b in builds for t in b.scores["tasks"]]
    used = [c for c in paper_columns if c.task is None or c.task in tasks]
    if not any(c.task in tasks for c in used if c.task):
        used = []
    if used and not all(t in tasks for t in AVERAGED):
        used = [c for c in used if c.key != "avg"]
    claimed = {c.task for c in paper_columns if c.task}
    from factory.recipe.tasks import is_reported_subtask

    # Tasks the paper's table has no column for (the bundled smoke sets, the multimodal benchmarks).
    extra = [Column(task, display_name(task), task) for task in dict.fromkeys(tasks)
             if task not in claimed and not (kind != "lora-ft" and is_reported_subtask(task))]
    table = Table(kind, title, model, [*used, *extra])
    table.rows += _base_rows(table, builds)
    if kind == "lora-ft":
        table.rows += _nf4_rows(table, builds)
    for build in builds:
        table.rows.append(_build_row(table, build))
    return table


def _value(row: dict | None, column: Column) -> float | None:
    if row is None or row.get("quantized") is None:
        return None
    return row["quantized"] * (100 if column.percent else 1)


def _unit(column: Column, metric: str | None) -> str:
    return "%" if column.percent else (metric or "")


def _figures(table: Table, scores: dict, which: str) -> dict[str, tuple[float | None, str]]:
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


def _cells(table: Table, name: str, figures: dict, paper: dict | None, label: str, build: BuildFigures | None,
           source: str | None) -> dict[str, Cell]:
    cells = {}
    for column in table.columns:
        ours, metric = figures.get(column.key, (None, ""))
        theirs = (paper or {}).get(column.paper_key) if column.paper_key else None
        cells[column.key] = Cell(
            table.kind, table.base_model, name, column.key, ours, theirs,
            None if ours is None or theirs is None else ours - theirs, _unit(column, metric), label,
            **(_build_fields(build) if build else {"source": source}))
    return cells


def _build_fields(build: BuildFigures) -> dict:
    return {"recipe": build.recipe, "method": build.method, "bits": build.bits, "group_size": build.group_size,
            "source": build.source, "repo_id": build.repo_id, "commit": build.commit}


def _base_rows(table: Table, builds: list[BuildFigures]) -> list[dict]:
    """The base model's own figures, once per evaluation plan the builds were measured with."""
    rows = []
    by_plan: dict[str, BuildFigures] = {}
    for build in builds:
        by_plan.setdefault(build.scores.get("base_evaluation") or "", build)
    paper = _paper_fp16(table, builds[0])
    for plan, build in by_plan.items():
        name = "base model" + (f" (evaluation {plan[:8]})" if len(by_plan) > 1 and plan else "")
        label = "; ".join(["smoke"] if build.smoke else [])
        cells = _cells(table, name, _figures(table, build.scores, "base"), paper, label, None,
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
    cells = _cells(table, "NF4 base (no fine-tuning)", _figures(table, build.scores["nf4_reference"], "quantized"),
                   paper.get("NormalFloat"), label, None, build.scores.get("nf4_reference_evaluation"))
    return [{"name": "NF4 base (no fine-tuning)", "label": label, "cells": cells, "build": None}]


def _paper_fp16(table: Table, build: BuildFigures) -> dict | None:
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
    from factory.recipe.paper import COLUMNS, PTQ_TABLE

    name = PAPER_MODELS.get(model)
    if name is None:
        return None
    with PTQ_TABLE.open() as f:
        for row in csv.DictReader(f):
            if row["model"] == name and row["method"] == "FP16":
                return {c: float(row[c]) for c in COLUMNS if row.get(c)}
    return None


def _paper_row(table: Table, build: BuildFigures) -> dict | None:
    if table.kind == "lora-ft":
        return (lora_ft_rows(build.model, build.paper_name) or {}).get(build.paper_name)
    if table.kind == "ptq":
        found = paper_rows(build.model, build.paper_name, build.paper_bits, build.group_size)
        return next((v for k, v in found.items() if k != "FP16"), None) if found else None
    return None


def _build_row(table: Table, build: BuildFigures) -> dict:
    name = f"{build.method} {build.scheme}"
    label = "; ".join(build.labels())
    cells = _cells(table, name, _figures(table, build.scores, "quantized"), _paper_row(table, build), label, build,
                   None)
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
    if build.kind == "llava-next" or _paper_row(table, build) is None:
        return None
    row = _build_row(table, build)
    return [cell_text(row["cells"][c.key]) for c in columns]


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


def _num(value: float | None, unit: str = "", like: float | None = None) -> str:
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
    ours = _num(cell.ours, cell.unit)
    if cell.paper is None:
        return ours
    sign = "+" if (cell.diff or 0) >= 0 else "-"
    scale = max(abs(cell.ours), abs(cell.paper)) if cell.ours is not None else None
    diff = "" if cell.diff is None else f" ({sign}{_num(abs(cell.diff), cell.unit, like=scale)})"
    return f"{ours} / {_num(cell.paper, cell.unit)}{diff}"


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
            text += [_num(build.mean_recovery),
                     "-" if bits is None else f"{bits:.2f}" + ("" if build.effective_bits_source == "counted"
                                                                else f" ({build.effective_bits_source})"),
                     "-" if build.size_bytes is None else _size(build.size_bytes),
                     _num(build.decode_tokens_per_s)]
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
