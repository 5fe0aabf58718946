"""Model-free vs oneshot builds of the data-free schemes on the real SmolLM2-135M (CPU), side by side.

RTN W4A16-g64 and FP8 dynamic, each built twice by `factory quantize` in its own process: through
llm-compressor's `model_free_ptq` (safetensors shard by shard, no model built) and through `oneshot` (the
model loaded whole). Peak RSS and wall time come from each child's rusage. Each output is then scored by
plain transformers in a process that never imports the factory (held-out perplexity, as
bench/float_formats_cpu.py does). The memory a model-free build needs per shard is measured as the
model-free peak RSS less the RSS of a process that imports the same libraries and loads nothing, over the
shard's bytes; the RAM of a 70B build follows from it (LLaMA-3-70B: 30 safetensors shards of at most
~5 GB in bf16, one worker).

Exits 1 when a model-free build's perplexity differs from oneshot's by more than 0.5 %.

    .venv/bin/python bench/model_free_cpu.py [--json bench/results/model_free_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from float_formats_cpu import BASE_PATH, MODEL, score  # noqa: E402
from measure import bench_env, fmt, run_child, table, write_figures  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCHEMES = {"rtn-int4-g64": ("rtn", "weights: {bits: 4, group_size: 64}"), "fp8-dynamic": ("fp8-dynamic", "weights: {bits: 8}")}
IMPORTS_ONLY = """
import resource, json, torch, transformers, compressed_tensors
from llmcompressor.entrypoints.model_free import model_free_ptq
print("BENCH_JSON " + json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
LLAMA3_70B_SHARD_GB = 5.0  # the largest of meta-llama/Meta-Llama-3-70B's 30 bf16 shards is under 5 GB


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    env = bench_env()
    work = Path(tempfile.mkdtemp(prefix="factory-bench-model-free-"))
    figures: dict = {"load_start": os.getloadavg()[0], "builds": {}}
    base_path = Path(run_child("base", [sys.executable, "-c", BASE_PATH], work / "base.log", env, cwd=REPO).extra["path"])
    shard_bytes = max(f.stat().st_size for f in base_path.glob("*.safetensors"))
    figures["imports_only_rss_mb"] = run_child("imports", [sys.executable, "-c", IMPORTS_ONLY], work / "imports.log",
                                               env, cwd=REPO).peak_rss_mb
    for name, (method, weights) in SCHEMES.items():
        for free in (True, False):
            label = f"{name}-{'model-free' if free else 'oneshot'}"
            recipe = work / f"{label}.yaml"
            recipe.write_text(f"name: {label}\nmethod: {method}\n{weights}\n{method}: {{model_free: {str(free).lower()}}}\n"
                              f"{MODEL}\n")
            run = run_child(label, [sys.executable, "-m", "factory.cli", "quantize", str(recipe), "--workdir", str(work)],
                            work / f"{label}.log", env, cwd=REPO)
            model = work / "builds" / label / "HuggingFaceTB--SmolLM2-135M-Instruct" / "model"
            figures["builds"][label] = {"wall_s": run.wall_s, "peak_rss_mb": run.peak_rss_mb,
                                        "perplexity": score(label, model, work, env)["perplexity"]}
            print(f"{label}: {figures['builds'][label]}", flush=True)
            write_figures(args.json, figures)
    b = figures["builds"]
    rows = [("build", "held-out ppl", "ppl vs oneshot", "wall s", "peak RSS MB", "RSS vs oneshot")]
    checks = {}
    for name in SCHEMES:
        free, shot = b[f"{name}-model-free"], b[f"{name}-oneshot"]
        for label, f in ((f"{name}-model-free", free), (f"{name}-oneshot", shot)):
            rows.append((label, fmt(f["perplexity"], ".3f"), fmt(f["perplexity"] / shot["perplexity"], ".4f"),
                         fmt(f["wall_s"]), fmt(f["peak_rss_mb"], ".0f"), fmt(f["peak_rss_mb"] / shot["peak_rss_mb"], ".2f")))
        checks[f"{name}: model-free perplexity within 0.5 % of oneshot"] = abs(free["perplexity"] / shot["perplexity"] - 1) <= 0.005
    print(table(rows))
    per_shard = max((b[f"{n}-model-free"]["peak_rss_mb"] - figures["imports_only_rss_mb"]) * 2**20 / shard_bytes
                    for n in SCHEMES)
    figures["model_free_rss_per_shard_byte"] = per_shard
    figures["llama3_70b_model_free_gb"] = figures["imports_only_rss_mb"] / 1024 + per_shard * LLAMA3_70B_SHARD_GB
    print(f"model-free: {per_shard:.2f} bytes of RSS per byte of shard above the {figures['imports_only_rss_mb']:.0f} MB "
          f"the libraries take (shard here: {shard_bytes / 2**20:.0f} MB); LLaMA-3-70B ({LLAMA3_70B_SHARD_GB:.0f} GB shards, "
          f"one worker): about {figures['llama3_70b_model_free_gb']:.1f} GB of RAM, against ~141 GB to load it in bf16")
    figures["orderings"] = checks
    for claim, holds in checks.items():
        print(f"{'PASS' if holds else 'MISS'}: {claim}")
    figures["load_end"] = os.getloadavg()[0]
    print(f"1-min load average start/end: {figures['load_start']:.2f} / {figures['load_end']:.2f}")
    write_figures(args.json, figures)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
