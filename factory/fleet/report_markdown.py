"""The report's README body: one Markdown table per (base model, paper table), its plots, and the notes
that say what the figures are, what was left out and what to cite."""

from __future__ import annotations

from factory.fleet.report import Report
from factory.recipe.paper import CITATION
from factory.stages.figures import BuildFigures
from factory.stages.paper_table import Table, cell_text, number


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


def _md(text: str) -> str:
    return text.replace("|", "\\|")


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
