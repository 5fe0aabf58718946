"""The report's files, written into one folder complete or not at all (factory.core.atomic): report.csv
and report.json (every cell shown, with its label and source), the plots (factory.fleet.report_plots)
and README.md, the Markdown (factory.fleet.report_markdown) under front matter that carries a digest of
every file: what `--push` compares to say 'unchanged'."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import asdict
from pathlib import Path

import yaml

from factory.core.atomic import atomic_dir
from factory.fleet.report import Report
from factory.fleet.report_markdown import markdown
from factory.fleet.report_plots import write_plots

REPORT_FORMAT = "factory-report/1"
README = "README.md"
CSV_FILE = "report.csv"
JSON_FILE = "report.json"
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
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def content_fingerprint(files: dict[str, bytes]) -> str:
    """A digest of every file of the report: what `--push` compares to say 'unchanged'."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()[:16]


def front_matter(fingerprint: str, models: list[str]) -> str:
    data = {"tags": ["factory", "factory-report", "quantized"], "factory": {"report": True,
                                                                            "fingerprint": fingerprint,
                                                                            "base_models": models}}
    return "---\n" + yaml.safe_dump(data, sort_keys=False) + "---\n\n"


def write(report: Report, out: Path, title: str = "factory report") -> dict[str, Path]:
    """Render the whole report (plots, CSV, JSON, README) aside, then swap it into `out` in one step:
    a reader (or a push) never sees half a report. Returns {file name: path}."""
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
