#!/usr/bin/env python3
"""`factory report` over 50 builds, plots included, on the CPU: under 10 s.

One real build (the tiny random Llama of the tests, RTN 4-bit, quantized, evaluated, speed-measured and
published to a local folder by `factory publish`; or `--build DIR`, an evaluated build folder of yours) is
copied into 50 build folders of 50 recipes (RTN, GPTQ and AWQ at 2/3/4/8 bits and four group sizes), each
with its figures scaled so that the tables and plots differ. Then, side by side in one run:

    factory  `factory report` over the 50 recipes, as a user runs it (its own process): tables, CSV,
             JSON and the four plots
    plain    the same files read with json and the same four plots drawn with plain matplotlib
             (no tables, no labels, no paper lookup): the floor of reading 50 builds and plotting

    .venv/bin/python bench/report_cpu.py [--repeats 3] [--build DIR] [--json FILE]

Target: the factory's median wall time under 10 s (exit 1 on a miss). The machine's load average is
printed beside the figures: a figure measured under contention is still a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
TARGET_S = 10.0
BUILDS = 50

from measure import bench_env, finish, median, ratio, table  # noqa: E402

TINY_RECIPE = """name: rtn-4bit
method: rtn
weights: {{bits: 4, group_size: 32}}
evaluation: {{suite: smoke, limit: 4, perplexity_seq_len: 64, batch_size: 4}}
publish: {{org: bench}}
models: [{{id: test/tiny, source: local, path: {model}, license: mit}}]
"""


def real_build(scratch: Path) -> tuple[Path, str]:
    """A real evaluated build (the tests' tiny Llama, published to a local folder); (build dir, model line)."""
    import torch
    from conftest import _tiny_llama_config
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([str(REPO / "factory" / "data" / "demo_calibration.txt")],
              trainers.BpeTrainer(vocab_size=512, special_tokens=["<s>", "</s>", "<image>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    model_dir = scratch / "tiny"
    LlamaForCausalLM(_tiny_llama_config(len(tokenizer))).to(torch.bfloat16).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    recipe = scratch / "real" / "rtn-4bit.yaml"
    recipe.parent.mkdir()
    recipe.write_text(TINY_RECIPE.format(model=model_dir))
    done = subprocess.run([sys.executable, "-m", "factory.cli", "publish", str(recipe), "--workdir",
                           str(scratch / "real"), "--to", str(scratch / "real-hub")], cwd=REPO,
                          env=bench_env(FACTORY_CACHE=str(scratch / "cache")), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the real build failed: {done.stderr[-2000:]}")
    return scratch / "real" / "builds" / "rtn-4bit" / "test--tiny", f"{{id: test/tiny, source: local, path: {model_dir}}}"


def grid() -> list[tuple[str, int, int | str]]:
    cells = [(m, b, g) for m in ("rtn", "gptq", "awq") for b in (2, 3, 4, 8) for g in (32, 64, 16, "per-channel")]
    return (cells + cells)[:BUILDS]


def fake_builds(real: Path, model_line: str, work: Path) -> list[Path]:
    """BUILDS recipe files and their build folders, copied from the real build with scaled figures."""
    from factory.pipeline.manifest import MANIFEST, Manifest
    from factory.recipe import load_recipe

    manifest = Manifest.read(real / MANIFEST)
    scores = json.loads((real / "eval" / "scores.json").read_text())
    speed_file = real / "speed" / "speed.json"
    speed = json.loads(speed_file.read_text()) if speed_file.is_file() else None
    model_id = manifest.model
    recipes = []
    for index, (method, bits, group) in enumerate(grid()):
        name = f"bench-{index:02d}-{method}-{bits}bit"
        calibration = "calibration: {source: demo, samples: 4, seq_len: 64}\n" if method != "rtn" else ""
        path = work / "recipes" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"name: {name}\nmethod: {method}\nweights: {{bits: {bits}, group_size: {group}}}\n"
                        f"{calibration}publish: {{org: bench}}\nmodels: [{model_line}]\n")
        recipe = load_recipe(path)
        from factory.pipeline.build import Build

        build = Build(recipe, recipe.models[0], work)
        shutil.copytree(real, build.dir, ignore=shutil.ignore_patterns("model", "upload", "*.lock"))
        loss = {2: 8.0, 3: 1.6, 4: 1.1, 8: 1.01}[bits] * (1 + index / 500)
        copy = json.loads(json.dumps(scores))
        for metrics in copy["tasks"].values():
            for row in metrics.values():
                if row["base"] is None or row["quantized"] is None:
                    continue
                row["quantized"] = row["base"] * (loss if not row["higher_is_better"] else 1 / loss)
                row["recovery"] = 1 / loss
        copy["mean_recovery"] = 1 / loss
        (build.dir / "eval" / "scores.json").write_text(json.dumps(copy))
        if speed is not None:
            fast = json.loads(json.dumps(speed))
            for batch in fast["build"]["batches"]:
                batch["decode_tokens_per_s"] = round(batch["decode_tokens_per_s"] * 8 / bits, 1)
            (build.dir / "speed" / "speed.json").write_text(json.dumps(fast))
        mine = manifest.model_copy(deep=True)
        mine.recipe = name
        mine.fingerprint_inputs = {**(manifest.fingerprint_inputs or {}),
                                   "settings": build.settings.model_dump(mode="json")}
        stage = mine.stages[build.artifact_stage] if build.artifact_stage in mine.stages else None
        if stage is not None:
            stage.size_bytes = int(stage.get("size_bytes", 1) * bits / 4)
        else:
            mine.stages[build.artifact_stage] = manifest.stages["quantize"]
        mine.write(build.dir / MANIFEST)
        recipes.append(path)
    assert model_id
    return recipes


def plain(work: Path, out: Path) -> None:
    """The floor: read the same files with json, draw the same four plots with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for scores_file in sorted((work / "builds").glob("*/*/eval/scores.json")):
        scores = json.loads(scores_file.read_text())
        manifest = json.loads((scores_file.parent.parent / "manifest.json").read_text())
        settings = manifest["fingerprint_inputs"]["settings"]
        rows.append((settings["method"], settings["bits"], scores["mean_recovery"],
                     manifest["stages"]["quantize"].get("size_bytes") or 1))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("a", "b", "c", "d"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot([r[1] for r in rows], [r[2] for r in rows], "o")
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)


PLAIN_CHILD = "import sys; sys.path.insert(0, sys.argv[1]); import report_cpu; report_cpu.plain(*map(__import__('pathlib').Path, sys.argv[2:]))"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--build", type=Path, help="an evaluated build folder to copy (default: make the tiny one)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="factory-bench-report-") as scratch_name:
        scratch = Path(scratch_name)
        if args.build:
            from factory.pipeline.manifest import MANIFEST, Manifest

            manifest = Manifest.read(args.build / MANIFEST)
            record = manifest.stages.get("quantize")
            path = record.get("base_model_path") if record else None
            if not manifest.model or not path:
                sys.exit(f"--build {args.build}: not an evaluated local-model build folder")
            real, model_line = args.build, f"{{id: {manifest.model}, source: local, path: {path}}}"
        else:
            real, model_line = real_build(scratch)
        work = scratch / "work"
        recipes = fake_builds(real, model_line, work)
        env = bench_env(OMP_NUM_THREADS="1")
        walls: dict[str, list[float]] = {"factory": [], "plain": []}
        for _ in range(args.repeats):
            for side in ("factory", "plain"):
                if side == "factory":
                    cmd = [sys.executable, "-m", "factory.cli", "report", str(work / "recipes"), "--workdir",
                           str(work), "--to", str(scratch / "hub")]
                else:
                    cmd = [sys.executable, "-c", PLAIN_CHILD, str(REPO / "bench"), str(work), str(scratch / "plain")]
                started = time.perf_counter()
                done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
                walls[side].append(time.perf_counter() - started)
                if done.returncode != 0:
                    sys.exit(f"{side} failed: {done.stderr[-2000:]}")
                if side == "factory":
                    said = done.stdout.strip()
                    if f"report: {BUILDS} builds" not in said:
                        sys.exit(f"expected {BUILDS} builds in the report, got: {said}")
        pngs = sorted(p.name for p in (work / "report").glob("*.png"))
    factory_s, plain_s = median(walls["factory"]), median(walls["plain"])
    load = os.getloadavg()
    figures = {"builds": BUILDS, "plots": pngs, "factory_s": factory_s, "plain_s": plain_s,
               "ratio": ratio(factory_s, plain_s), "target_s": TARGET_S,
               "verdict": "PASS" if factory_s is not None and factory_s < TARGET_S else "MISS",
               "walls": walls, "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in load]}
    text = table([("side", "median wall s", "runs"),
                  ("factory report", f"{factory_s:.2f}", ", ".join(f"{w:.2f}" for w in walls["factory"])),
                  ("plain json + matplotlib", f"{plain_s:.2f}", ", ".join(f"{w:.2f}" for w in walls["plain"]))])
    text += (f"\n\n{BUILDS} builds, {len(pngs)} plots; factory/plain {figures['ratio']}x; "
             f"target < {TARGET_S:.0f} s: {figures['verdict']}\n"
             f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
             "(1 / 5 / 15 min)")
    return finish(text, figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
