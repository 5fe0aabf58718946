#!/usr/bin/env python3
"""The factory's overhead on the offline fine-tuning demo: `factory finetune` vs the same QLoRA run
written directly against transformers + peft (bench/plain_peft_qlora.py).

Side (a) runs `factory finetune recipes/demo-smollm2-qlora.yaml --workdir <fresh tmp>`; side (b)
runs the plain script with the same base checkpoint, data, template, LoRA and Trainer settings
(read from the recipe). Each run is its own process; wall time is spawn to exit, peak RSS the
child's ru_maxrss. The SmolLM2 GGUF -> bf16 conversion happens once up front, so neither side
pays for it. Both sides should train the same adapter (same seed, same data order): the report
says whether the adapter tensors are identical.

    .venv/bin/python bench/finetune_cpu.py [--repeats N] [--json PATH]

Targets: factory time <= 1.05x plain, peak RSS <= 1.10x plain; exit status 1 on a miss.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

from measure import Run, alternating, bench_env, finish, run_child

from quantize_cpu import factory_command, report, summarize

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "demo-smollm2-qlora.yaml"
PLAIN = Path(__file__).resolve().parent / "plain_peft_qlora.py"


def same_adapter(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    ta, tb = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    return ta.keys() == tb.keys() and all(ta[k].equal(tb[k]) for k in ta)


def main(argv: list[str] | None = None) -> int:
    import quantize_cpu

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1, help="runs per side, in alternating order (median reported)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--keep", action="store_true", help="keep the temporary build folders and logs")
    args = p.parse_args(argv)

    from factory.engines.lora.data import DEMO_FILE
    from factory.engines.base_models import fetch_base, slug
    from factory.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    entry = recipe.models[0]
    ft = recipe.effective(entry).finetune
    assert recipe.method == "qlora" and ft.data.source == "demo" and ft.max_steps  # what the plain script does
    base = fetch_base(entry, RECIPE.parent).path
    print(f"base checkpoint: {base}", flush=True)
    plain_args = ["--base", str(base), "--data", str(DEMO_FILE), "--r", str(ft.lora.r), "--alpha", str(ft.lora.alpha),
                  "--dropout", str(ft.lora.dropout), "--targets", *ft.lora.target_modules, "--steps", str(ft.max_steps),
                  "--lr", str(ft.learning_rate), "--scheduler", ft.lr_scheduler, "--batch-size", str(ft.batch_size),
                  "--accumulation", str(ft.gradient_accumulation), "--max-seq-len", str(ft.max_seq_len),
                  "--max-grad-norm", str(ft.max_grad_norm), "--save-steps", str(ft.save_steps), "--seed", str(ft.seed)]
    plain_args += ["--samples", str(ft.data.samples)] if ft.data.samples else []
    plain_args += ["--gradient-checkpointing"] if ft.gradient_checkpointing else []
    plain_args += ["--merge"] if ft.merge else []
    env = bench_env()
    load_before = os.getloadavg()[0]
    scratch = Path(tempfile.mkdtemp(prefix="factory-bench-ft-"))
    runs: list[Run] = []
    outputs: dict[str, Path] = {}
    try:
        for i, side in enumerate(alternating(args.repeats, "factory", "plain")):
            work = scratch / f"{i:02d}-{side}"
            print(f"[{i + 1}/{2 * args.repeats}] {side} ...", end=" ", flush=True)
            if side == "factory":
                run = run_child(side, [*factory_command(), "finetune", str(RECIPE), "--workdir", str(work)],
                                work / "log.txt", env, cwd=REPO)
                build = work / "builds" / recipe.name / slug(entry.id)
                stage = json.loads((build / "manifest.json").read_text())["stages"]["finetune"]
                run.extra = {"wall_time_s": stage["wall_time_s"], "peak_rss_mb": stage["peak_rss_mb"]}
                out = build / "model"
            else:
                out = work / "model"
                run = run_child(side, [sys.executable, str(PLAIN), "--out", str(out), "--work", str(work / "ckpt"),
                                       *plain_args], work / "log.txt", env, cwd=REPO)
            outputs.setdefault(side, out)
            runs.append(run)
            print(f"{run.wall_s:.1f} s, {run.peak_rss_mb:.0f} MB", flush=True)
        same = same_adapter(outputs["factory"], outputs["plain"])
    finally:
        if args.keep:
            print(f"kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    quantize_cpu.RECIPE = RECIPE  # the shared summary and report name the recipe
    figures = summarize(runs, args.repeats, same, (load_before, os.getloadavg()[0]))
    text = report(figures).replace("quantize stage time", "finetune stage time").replace(
        "identical quantized weights", "identical adapter weights")
    return finish(text, figures, args.json)


if __name__ == "__main__":
    sys.exit(main())
