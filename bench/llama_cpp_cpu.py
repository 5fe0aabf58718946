#!/usr/bin/env python3
"""GGUF builds in llama.cpp, side by side in one run, on the demo model (SmolLM2-135M-Instruct).

1. The factory's speed measurement (factory.stages.speed's worker, what the speed stage runs) against a plain
   xllamacpp call on the same Q4_K_M file (bench/plain_llama_cpp.py, no factory import): batch-1 decode
   time. Goal: the factory's time within 1.05x of the plain call's.
2. Q4_K_M against the base's F16 GGUF (written by the factory's converter) at batch 1, decode tokens/s.
   Goal: at least 2x.
3. For the README's "which output is fastest on a CPU": the base checkpoint in transformers (the
   speed stage's transformers worker), which is also how a compressed-tensors build runs on a CPU
   (transformers decompresses it to the same dense weights).
4. Decode tokens/s as a fraction of the memory-bandwidth bound: every weight byte is read once per
   decoded token, so bandwidth / file size bounds the batch-1 decode rate; the bandwidth is measured
   here (numpy copy of a 1 GiB array, bytes read + written per second). No goal: a reading.

    OMP_NUM_THREADS=2 .venv/bin/python bench/llama_cpp_cpu.py [--workdir DIR] [--repeats N] [--json PATH]

Each side runs in its own process, alternating, `--repeats` times; medians are compared. Run it on an
otherwise idle machine: llama.cpp's threads spin, and a shared core slows it several times over.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

from measure import alternating, bench_env, child_result, fmt, median, ratio, run_child, table, verdict, write_figures

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "demo-smollm2-gguf-q4km.yaml"
PLAIN = Path(__file__).resolve().parent / "plain_llama_cpp.py"
OVERHEAD_TARGET, SPEEDUP_TARGET = 1.05, 2.0
PROMPT, NEW = 128, 128


def memory_bandwidth_gb_s(size_mb: int = 1024, repeats: int = 5) -> float:
    """Best of `repeats` copies of one array into another: bytes read + written per second."""
    import numpy as np

    src = np.ones(size_mb * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - started)
    return 2 * src.nbytes / best / 1e9


def speed_worker(side: str, runtime: str, kind: str, path: Path, log: Path) -> dict:
    """The speed stage's own measurement (its worker process) of one artifact at batch 1."""
    code = ("import json; from pathlib import Path; from factory.stages.speed import run_measurement; "
            "from factory.pipeline.artifact import Artifact; from factory.recipe import Speed; "
            f"s=Speed(batch_sizes=[1], prompt_tokens={PROMPT}, new_tokens={NEW}, runtime={runtime!r}); "
            f"r=run_measurement({runtime!r},'causal-lm',Artifact({kind!r},Path({str(path)!r})),s); "
            "b=r['batches'][0]; print('BENCH_JSON '+json.dumps({'decode_s': b.get('decode_s'), "
            "'decode_tokens_per_s': b['decode_tokens_per_s'], 'weights_mb': r['weights_mb'], 'dtype': r.get('dtype')}))")
    return run_child(side, [sys.executable, "-c", code], log, bench_env()).extra


def factory_side(gguf: Path, log: Path) -> dict:
    """The factory's speed stage on the GGUF file, in llama.cpp."""
    return speed_worker("factory", "llama.cpp", "gguf", gguf.parent, log)


def transformers_side(checkpoint: Path, log: Path) -> dict:
    """The base checkpoint in transformers, through the same worker."""
    return speed_worker("transformers", "transformers", "checkpoint", checkpoint, log)


def plain_side(gguf: Path, log: Path) -> dict:
    return run_child("plain", [sys.executable, str(PLAIN), str(gguf), str(PROMPT), str(NEW)], log, bench_env()).extra


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="where the Q4_K_M build is (made there if absent)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-llama-cpp-"))

    from factory.stages.speed.base_gguf import base_gguf
    from factory.pipeline.build import Build
    from factory.stages.artifact import quantize
    from factory.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    build = Build(recipe, recipe.models[0], work)
    quantize(build)
    q4 = build.model_dir / build.artifact().gguf_file
    f16 = base_gguf(build.entry, build.recipe_dir, log=print)
    logs = work / "bench-logs"

    runs: dict[str, list[dict]] = {"factory": [], "plain": [], "f16": [], "transformers": []}
    for i, side in enumerate(alternating(args.repeats, "factory", "plain")):
        runs[side].append(factory_side(q4, logs / f"{side}-{i}.log") if side == "factory"
                          else plain_side(q4, logs / f"{side}-{i}.log"))
    for i in range(args.repeats):
        runs["f16"].append(plain_side(f16, logs / f"f16-{i}.log"))
    from factory.engines.base_models import fetch_base

    checkpoint = fetch_base(build.entry, build.recipe_dir).path
    runs["transformers"] = [transformers_side(checkpoint, logs / f"transformers-{i}.log") for i in range(args.repeats)]

    def med(side: str, key: str) -> float | None:
        return median([r.get(key) for r in runs[side]])

    overhead = ratio(med("factory", "decode_s"), med("plain", "decode_s"))
    speedup = ratio(med("plain", "decode_tokens_per_s"), med("f16", "decode_tokens_per_s"))
    bandwidth = memory_bandwidth_gb_s()
    bounds = {name: bandwidth * 1e9 / path.stat().st_size for name, path in (("Q4_K_M", q4), ("F16", f16))}
    fraction = {"Q4_K_M": ratio(med("plain", "decode_tokens_per_s"), bounds["Q4_K_M"]),
                "F16": ratio(med("f16", "decode_tokens_per_s"), bounds["F16"])}
    from factory.engines.llama_cpp import binding_version, default_threads
    from factory.stages.speed import device_name

    figures = {
        "date": time.strftime("%Y-%m-%d"), "device": device_name("llama.cpp"), "machine": platform.machine(),
        "threads": default_threads(), "binding": f"xllamacpp {binding_version()}", "prompt_tokens": PROMPT,
        "new_tokens": NEW, "repeats": args.repeats, "runs": runs,
        "file_mb": {"Q4_K_M": round(q4.stat().st_size / 2**20, 1), "F16": round(f16.stat().st_size / 2**20, 1)},
        "overhead": {"factory_over_plain_decode_time": overhead, "target": OVERHEAD_TARGET,
                     "verdict": verdict(overhead, OVERHEAD_TARGET)},
        "speedup": {"q4_k_m_over_f16_decode": speedup, "target": SPEEDUP_TARGET,
                    "verdict": "-" if speedup is None else ("PASS" if speedup >= SPEEDUP_TARGET else "MISS")},
        "fastest_on_cpu": sorted(((name, med(side, "decode_tokens_per_s")) for name, side in (
            ("GGUF Q4_K_M in llama.cpp", "plain"), ("base F16 GGUF in llama.cpp", "f16"),
            ("base checkpoint in transformers (as compressed-tensors builds run on a CPU)", "transformers"))),
            key=lambda pair: -(pair[1] or 0)),
        "bandwidth": {"measured_gb_s": round(bandwidth, 2),
                      "bound_tokens_per_s": {k: round(v, 1) for k, v in bounds.items()},
                      "fraction_of_bound": fraction},
    }
    rows = [("", "decode tok/s (median)", "decode s", "file MB", "bound tok/s", "of bound"),
            ("factory, Q4_K_M", fmt(med("factory", "decode_tokens_per_s")), fmt(med("factory", "decode_s"), ".3f"),
             fmt(figures["file_mb"]["Q4_K_M"]), "", ""),
            ("plain, Q4_K_M", fmt(med("plain", "decode_tokens_per_s")), fmt(med("plain", "decode_s"), ".3f"),
             fmt(figures["file_mb"]["Q4_K_M"]), fmt(bounds["Q4_K_M"]), fmt(fraction["Q4_K_M"], ".2f")),
            ("plain, F16 base", fmt(med("f16", "decode_tokens_per_s")), fmt(med("f16", "decode_s"), ".3f"),
             fmt(figures["file_mb"]["F16"]), fmt(bounds["F16"]), fmt(fraction["F16"], ".2f")),
            ("transformers, base checkpoint", fmt(med("transformers", "decode_tokens_per_s")), "",
             fmt(median([r.get("weights_mb") for r in runs["transformers"]])), "", "")]
    print()
    print(f"{figures['device']}, {figures['binding']}, batch 1, {PROMPT}-token prompts, {NEW} new tokens; "
          f"memory bandwidth {bandwidth:.1f} GB/s")
    print(table(rows))
    print(f"factory / plain decode time: {fmt(overhead, '.3f')} (target <= {OVERHEAD_TARGET}) "
          f"{figures['overhead']['verdict']}")
    print(f"Q4_K_M / F16 decode tokens/s: {fmt(speedup, '.2f')} (target >= {SPEEDUP_TARGET}) "
          f"{figures['speedup']['verdict']}")
    print("fastest on this CPU, batch-1 decode: " + "; ".join(f"{n} {fmt(v)} tok/s" for n, v in figures["fastest_on_cpu"]))
    write_figures(args.json, figures)
    return 1 if "MISS" in (figures["overhead"]["verdict"], figures["speedup"]["verdict"]) else 0


if __name__ == "__main__":
    sys.exit(main())
