#!/usr/bin/env python3
"""The factory's overhead on the offline demo: `factory quantize` vs the same work in plain llm-compressor.

Side (a) runs `factory quantize recipes/demo-smollm2-gptq-4bit.yaml --workdir <fresh tmp>`;
side (b) runs bench/plain_llmcompressor_gptq.py (no factory import) with the same base
checkpoint, calibration windows and GPTQ modifier. Each run is its own process; the wall time
is spawn to exit and the peak RSS is the child's ru_maxrss. The SmolLM2 GGUF -> bf16
conversion happens once up front, so neither side pays for it.

    .venv/bin/python bench/quantize_cpu.py [--repeats N] [--json PATH]

Targets: factory time <= 1.05x plain, peak RSS <= 1.10x plain.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

from measure import finish, Run, alternating, bench_env, fmt, median, ratio, run_child, same_weights, table, verdict

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "demo-smollm2-gptq-4bit.yaml"
PLAIN = Path(__file__).resolve().parent / "plain_llmcompressor_gptq.py"
TIME_TARGET, RSS_TARGET = 1.05, 1.10


def factory_command() -> list[str]:
    exe = Path(sys.executable).parent / "factory"  # the console script a user runs
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "factory.cli"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1, help="runs per side, in alternating order (median reported)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--keep", action="store_true", help="keep the temporary build folders and logs")
    args = p.parse_args(argv)

    from factory.engines.base_models import fetch_base, slug
    from factory.recipe import PER_CHANNEL, load_recipe

    recipe = load_recipe(RECIPE)
    entry = recipe.models[0]
    settings = recipe.effective(entry)
    cal = settings.calibration
    # The plain script hard-codes GPTQ W<bits>A16 grouped, symmetric, on the demo text.
    assert settings.method == "gptq" and cal is not None and cal.source == "demo"
    assert settings.group_size != PER_CHANNEL and settings.symmetric and not settings.activation_bits
    base = fetch_base(entry, RECIPE.parent).path  # converts the GGUF once; cached afterwards
    print(f"base checkpoint: {base}", flush=True)

    plain_args = ["--base", str(base), "--samples", str(cal.samples), "--seq-len", str(cal.seq_len),
                  "--seed", str(cal.seed), "--bits", str(settings.bits), "--group-size", str(settings.group_size),
                  "--dampening-frac", str(settings.gptq.dampening_frac), "--ignore", *settings.ignore]
    env = bench_env()
    load_before = os.getloadavg()[0]  # other tenants' CPU use skews a 2-core timing; record it
    scratch = Path(tempfile.mkdtemp(prefix="factory-bench-cpu-"))
    runs: list[Run] = []
    outputs: dict[str, Path] = {}
    try:
        for i, side in enumerate(alternating(args.repeats, "factory", "plain")):
            work = scratch / f"{i:02d}-{side}"
            print(f"[{i + 1}/{2 * args.repeats}] {side} ...", end=" ", flush=True)
            if side == "factory":
                run = run_child(side, [*factory_command(), "quantize", str(RECIPE), "--workdir", str(work)],
                                work / "log.txt", env, cwd=REPO)
                build = work / "builds" / recipe.name / slug(entry.id)
                stage = json.loads((build / "manifest.json").read_text())["stages"]["quantize"]
                run.extra = {"wall_time_s": stage["wall_time_s"], "peak_rss_mb": stage["peak_rss_mb"]}
                out = build / "model"
            else:
                out = work / "model"
                run = run_child(side, [sys.executable, str(PLAIN), "--out", str(out), *plain_args],
                                work / "log.txt", env, cwd=REPO)
            outputs.setdefault(side, out)
            runs.append(run)
            print(f"{run.wall_s:.1f} s, {run.peak_rss_mb:.0f} MB", flush=True)
        same = same_weights(outputs["factory"], outputs["plain"])
    finally:
        if args.keep:
            print(f"kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    figures = summarize(runs, args.repeats, same, (load_before, os.getloadavg()[0]))
    return finish(report(figures), figures, args.json)


def summarize(runs: list[Run], repeats: int, same: bool, load: tuple[float, float]) -> dict:
    import torch

    med = {side: {"wall_s": median([r.wall_s for r in runs if r.side == side]),
                  "peak_rss_mb": median([r.peak_rss_mb for r in runs if r.side == side]),
                  "in_process_s": median([r.extra.get("wall_time_s") for r in runs if r.side == side])}
           for side in ("factory", "plain")}
    ratios = {k: ratio(med["factory"][k], med["plain"][k]) for k in ("wall_s", "peak_rss_mb", "in_process_s")}
    # Other tenants' load comes in bursts that only slow runs down, so the fastest run is the
    # least disturbed estimate; reported beside the median, not instead of it.
    fastest = {side: min(r.wall_s for r in runs if r.side == side) for side in ("factory", "plain")}
    return {
        "recipe": str(RECIPE.relative_to(REPO)),
        "repeats": repeats,
        "host": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                 "machine": platform.machine(), "loadavg_1min_start_end": [round(x, 2) for x in load]},
        "runs": [{"side": r.side, "wall_s": r.wall_s, "peak_rss_mb": r.peak_rss_mb,
                  "in_process_s": r.extra.get("wall_time_s")} for r in runs],
        "median": med,
        "ratio_factory_over_plain": ratios,
        "fastest_wall_s": {**fastest, "ratio": ratio(fastest["factory"], fastest["plain"])},
        "targets": {"wall_s": TIME_TARGET, "peak_rss_mb": RSS_TARGET},
        "verdict": {"wall_s": verdict(ratios["wall_s"], TIME_TARGET),
                    "peak_rss_mb": verdict(ratios["peak_rss_mb"], RSS_TARGET)},
        "identical_weights": same,
    }


def report(f: dict) -> str:
    med, r, v = f["median"], f["ratio_factory_over_plain"], f["verdict"]
    rows = [("", "factory", "plain", "factory/plain", "target", "")]
    rows.append(("wall time s", fmt(med["factory"]["wall_s"]), fmt(med["plain"]["wall_s"]), fmt(r["wall_s"], ".3f"),
                 f"<= {TIME_TARGET:.2f}", v["wall_s"]))
    rows.append(("peak RSS MB", fmt(med["factory"]["peak_rss_mb"], ".0f"), fmt(med["plain"]["peak_rss_mb"], ".0f"),
                 fmt(r["peak_rss_mb"], ".3f"), f"<= {RSS_TARGET:.2f}", v["peak_rss_mb"]))
    rows.append(("in-process s *", fmt(med["factory"]["in_process_s"]), fmt(med["plain"]["in_process_s"]),
                 fmt(r["in_process_s"], ".3f"), "", ""))
    head = (f"{f['recipe']}: median of {f['repeats']} run(s) per side, {f['host']['cpus']} CPUs, "
            f"{f['host']['torch_threads']} torch threads")
    notes = ["* the factory manifest's quantize stage time and the plain script's own clock, both started once "
             "torch is imported; the gap to the wall time is python startup, imports and (factory) recipe parsing",
             f"identical quantized weights on both sides: {'yes' if f['identical_weights'] else 'NO'}",
             "fastest run: factory {factory:.1f} s, plain {plain:.1f} s, ratio {ratio:.3f}"
             .format(**f["fastest_wall_s"]),
             "1-min load average at start / end: {:.2f} / {:.2f} (above the CPU count means other work shared the CPUs)"
             .format(*f["host"]["loadavg_1min_start_end"])]
    return "\n".join([head, table(rows), *notes])


if __name__ == "__main__":
    sys.exit(main())
