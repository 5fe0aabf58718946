"""Shared by the bench scripts: run a child process, measure its wall time and peak RSS."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RESULT_PREFIX = "BENCH_JSON "


@dataclass
class Run:
    side: str
    wall_s: float
    peak_rss_mb: float
    extra: dict = field(default_factory=dict)  # what the child reported (BENCH_JSON line, manifest)
    cpu_s: float = 0.0  # user + system CPU time of the child (and the children it reaped)


def bench_env(**overrides: str) -> dict[str, str]:
    """The same environment for every child: offline, llm-compressor's logs at WARNING."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "LLM_COMPRESSOR_LOG_LEVEL": "WARNING", **overrides}


def run_child(side: str, cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> Run:
    """Run `cmd` to completion; wall time from spawn to reap, peak RSS from the child's own rusage.

    os.wait4 gives the rusage of exactly this child (plus any children it reaped), unlike
    RUSAGE_CHILDREN, which would take the maximum over every earlier child of this process.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so tell Popen
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        sys.exit(f"{side} failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail))
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss_mb = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
    return Run(side, round(wall, 2), round(rss_mb, 1), child_result(log),
               cpu_s=round(usage.ru_utime + usage.ru_stime, 2))


def same_weights(a: Path, b: Path) -> bool:
    """Whether both sides wrote bit-identical tensors: evidence that they did the same work."""
    from safetensors.torch import load_file

    def tensors(d: Path) -> dict:
        out: dict = {}
        for f in sorted(d.glob("*.safetensors")):
            out.update(load_file(f))
        return out

    ta, tb = tensors(a), tensors(b)
    return ta.keys() == tb.keys() and all(ta[k].dtype == tb[k].dtype and ta[k].equal(tb[k]) for k in ta)


def child_result(log: Path) -> dict:
    """The last `BENCH_JSON {...}` line a child printed, if any."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return {}


def alternating(repeats: int, first: str, second: str) -> list[str]:
    """first, second, second, first, first, second, ... so neither side always runs warm or cold."""
    order: list[str] = []
    for i in range(repeats):
        order += [first, second] if i % 2 == 0 else [second, first]
    return order


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def verdict(r: float | None, limit: float) -> str:
    return "-" if r is None else ("PASS" if r <= limit else "MISS")


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
                     for row in rows)


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def write_figures(json_path: Path | None, figures: dict) -> None:
    """The figures as indented JSON at json_path (its folder made if needed); nothing when no path was asked for."""
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(figures, indent=2) + "\n")


def finish(report_text: str, figures: dict, json_path: Path | None) -> int:
    """Print the side-by-side report, write the figures as JSON when asked; exit status 1 on any MISS."""
    print()
    print(report_text)
    if json_path:
        write_figures(json_path, figures)
        print(f"\nwrote {json_path}")
    return missed(figures)


def missed(figures) -> int:
    """1 if any verdict in the figures (nested anywhere) is MISS, else 0: a missed target fails the run."""
    if isinstance(figures, dict):
        return max((missed(v) for v in figures.values()), default=0)
    if isinstance(figures, (list, tuple)):
        return max((missed(v) for v in figures), default=0)
    return 1 if figures == "MISS" else 0
