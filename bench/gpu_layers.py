#!/usr/bin/env python3
"""Quantization cost at the LLaMA-3-70B or -8B layer shape, a few layers, extrapolated to the full depth.

LLaMA-3-70B: hidden 8192, intermediate 28672, 64 attention heads, 8 KV heads, 80 layers;
LLaMA-3-8B: hidden 4096, intermediate 14336, 32 heads, 8 KV heads, 32 layers (vocabulary 128256).
A randomly initialised checkpoint of that shape but only a few layers is built on the GPU
(gpu_gptq_shapes.py's builder, its own process), then `factory quantize` runs each build, each in
its own process, at two depths. Every method here calibrates one layer at a time (llm-compressor's
sequential onloading; the factory's own PB-LLM/BiLLM/SliM-LLM loop), so wall time grows by a fixed
amount per layer:

    t(L) = overhead + L * per_layer   ->   t(full) = overhead + full_depth * per_layer

fitted through the two depths (or t(L) * full / L from one). Peak GPU memory is per layer and does
not grow with depth; peak RSS grows with the model held on the CPU and is extrapolated the same way.
Random weights: the times and memory are the real method's, the quality is not measured here.

Builds (--methods): gptq and awq (W4A16-g128, the default), gptq-2bit, billm-1.1bit, pb-llm-2bit,
slim-llm-2bit and autoround-2bit (W2A16-g128; --autoround-iters, the recipes' 200 by default).

    python bench/gpu_layers.py --json bench/results/70b.json            # GPU: 70B shape, depths 2 and 4
    python bench/gpu_layers.py --shape 8b --methods gptq-2bit,billm-1.1bit,autoround-2bit --depths 1,2
    python bench/gpu_layers.py --tiny                                   # CPU smoke test, scaled-down shape

Without CUDA (and without --tiny) it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

from measure import bench_env, fmt, run_child, table, write_figures  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHAPES = HERE / "gpu_gptq_shapes.py"
SHAPES_BY_NAME = {  # full depth and layer shape
    "70b": {"layers": 80, "hidden": 8192, "intermediate": 28672, "heads": 64, "kv_heads": 8, "vocab": 128256},
    "8b": {"layers": 32, "hidden": 4096, "intermediate": 14336, "heads": 32, "kv_heads": 8, "vocab": 128256},
}
TINY_LAYER = {"hidden": 256, "intermediate": 896, "heads": 8, "kv_heads": 2, "vocab": 1024}  # multiples of 128
# build name -> (recipe body after `method:`; {group} is --group-size)
BUILDS = {
    "gptq": "gptq\nweights: {{bits: 4, group_size: {group}, symmetric: true}}\ngptq: {{dampening_frac: 0.01}}",
    "awq": "awq\nweights: {{bits: 4, group_size: {group}, symmetric: true}}",
    "gptq-2bit": "gptq\nweights: {{bits: 2, group_size: {group}, symmetric: true}}\ngptq: {{dampening_frac: 0.01}}",
    "autoround-2bit": "autoround\nweights: {{bits: 2, group_size: {group}}}\nautoround: {{iters: {iters}}}",
    "billm-1.1bit": "billm\nweights: {{bits: 1}}",  # BiLLM, PB-LLM and SliM-LLM fix their blocks at 128
    "pb-llm-2bit": "pb-llm\nweights: {{bits: 2}}\npb-llm: {{salient_fraction: 0.142857}}",
    "slim-llm-2bit": "slim-llm\nweights: {{bits: 2}}",
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES_BY_NAME), default="70b", help="LLaMA-3 layer shape")
    p.add_argument("--depths", default="2,4", help="layer counts to time, comma-separated (two give the fit)")
    p.add_argument("--methods", default="gptq,awq", help=f"comma-separated builds: {', '.join(BUILDS)}")
    p.add_argument("--autoround-iters", type=int, default=200, help="AutoRound's tuning steps per block")
    p.add_argument("--samples", type=int, default=32, help="calibration windows (the recipes use 128)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--tiny", action="store_true", help="scaled-down shape on whatever device is there (a smoke test)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--keep", action="store_true")
    return p.parse_args(argv)


def recipe(method: str, checkpoint: Path, a: argparse.Namespace) -> str:
    body = BUILDS[method].format(group=a.group_size, iters=a.autoround_iters)
    return textwrap.dedent(f"""\
        name: bench-layers-{method}
        calibration: {{source: file, path: calibration.txt, samples: {a.samples}, seq_len: {a.seq_len}, seed: 2}}
        models:
          - {{id: bench/random-layer-shape, source: local, path: {checkpoint}, kind: causal-lm}}
        """) + f"method: {body}\n"


def fit(points: list[tuple[int, float | None]], full: int) -> dict:
    """overhead + per_layer * L through the measured (depth, value) points; the value at `full` layers."""
    points = [(d, v) for d, v in points if v is not None]
    if not points:
        return {"per_layer": None, "overhead": None, "at_full_depth": None}
    if len(points) == 1:
        (d, v), = points
        return {"per_layer": v / d, "overhead": None, "at_full_depth": v * full / d}
    (d1, v1), (d2, v2) = points[0], points[-1]
    per_layer = (v2 - v1) / (d2 - d1)
    if per_layer <= 0:  # the deeper run was not slower: noise swamps the per-layer cost at this size
        return {"per_layer": v2 / d2, "overhead": None, "at_full_depth": v2 * full / d2,
                "note": f"no growth from {d1} to {d2} layers (noise); the deepest run scaled: an upper bound"}
    overhead = v1 - per_layer * d1
    return {"per_layer": per_layer, "overhead": overhead, "at_full_depth": overhead + per_layer * full}


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    import torch

    methods = a.methods.split(",")
    unknown = sorted(set(methods) - set(BUILDS))
    if unknown:
        sys.exit(f"--methods: unknown build(s) {', '.join(unknown)}; known: {', '.join(BUILDS)}")
    cuda = torch.cuda.is_available()
    if not cuda and not a.tiny:
        print("no CUDA device: skipping the layer-shape benchmark (--tiny runs a scaled-down shape as a smoke test)")
        return 0
    shape = {**SHAPES_BY_NAME[a.shape], **(TINY_LAYER if a.tiny else {})}
    full = shape["layers"]
    if a.tiny:
        a.samples, a.seq_len, a.group_size = min(a.samples, 4), min(a.seq_len, 64), min(a.group_size, 64)
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    depths = sorted({int(d) for d in a.depths.split(",")})
    env = bench_env()
    scratch = Path(tempfile.mkdtemp(prefix="factory-bench-layers-"))
    runs = []
    try:
        inputs = scratch / "inputs"
        inputs.mkdir()
        sys.path.insert(0, str(HERE))
        from gpu_gptq_shapes import calibration_text

        calibration_text(argparse.Namespace(samples=a.samples, seq_len=a.seq_len, vocab=shape["vocab"]),
                         inputs / "calibration.txt")
        for depth in depths:
            checkpoint = scratch / f"checkpoint-{depth}"
            checkpoint.mkdir()
            started = time.perf_counter()
            subprocess.run([sys.executable, str(SHAPES), "--build-only", str(checkpoint), "--layers", str(depth),
                            "--hidden", str(shape["hidden"]), "--intermediate", str(shape["intermediate"]),
                            "--heads", str(shape["heads"]), "--kv-heads", str(shape["kv_heads"]),
                            "--vocab", str(shape["vocab"]), "--build-device", "cuda" if cuda else "cpu"],
                           env=env, check=True, cwd=REPO)
            print(f"built a {depth}-layer checkpoint of the {a.shape} layer shape{' (tiny)' if a.tiny else ''} "
                  f"in {time.perf_counter() - started:.0f} s", flush=True)
            for method in methods:
                work = scratch / f"{method}-{depth}"
                recipe_file = inputs / f"{method}-{depth}.yaml"
                recipe_file.write_text(recipe(method, checkpoint, a))
                print(f"{method} at {depth} layers ...", end=" ", flush=True)
                run = run_child(method, [sys.executable, "-m", "factory.cli", "quantize", str(recipe_file),
                                         "--workdir", str(work)], work / "log.txt", env, cwd=REPO)
                manifest = work / "builds" / f"bench-layers-{method}" / "bench--random-layer-shape" / "manifest.json"
                stage = json.loads(manifest.read_text())["stages"]["quantize"] if manifest.is_file() else {}
                if stage.get("status") != "done":
                    tail = (work / "log.txt").read_text().strip().splitlines()[-1:] if (work / "log.txt").is_file() else []
                    raise SystemExit(f"{method} at {depth} layers failed: {tail[0] if tail else 'no log'}")
                runs.append({"method": method, "layers": depth, "wall_s": round(run.wall_s, 1),
                             "stage_s": stage.get("wall_time_s"), "peak_gpu_mb": stage.get("peak_gpu_mb"),
                             "peak_rss_mb": round(run.peak_rss_mb, 1)})
                print(f"{run.wall_s:.1f} s (stage {stage.get('wall_time_s')} s), "
                      f"GPU {fmt(stage.get('peak_gpu_mb'), '.0f')} MB, RSS {run.peak_rss_mb:.0f} MB", flush=True)
                shutil.rmtree(work / "builds", ignore_errors=True)
            shutil.rmtree(checkpoint, ignore_errors=True)
    finally:
        if not a.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    figures = {"device": device, "date": time.strftime("%Y-%m-%d", time.gmtime()), "tiny": a.tiny,
               "shape_name": a.shape, "shape": shape, "autoround_iters": a.autoround_iters,
               "samples": a.samples, "seq_len": a.seq_len, "group_size": a.group_size, "runs": runs,
               "extrapolated": {}}
    rows = [("method", "per layer s", "overhead s", f"{full} layers (h)", "peak GPU MB", f"RSS at {full} layers (GB)")]
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        time_fit = fit([(r["layers"], r["stage_s"]) for r in mine], full)
        rss_fit = fit([(r["layers"], r["peak_rss_mb"]) for r in mine], full)
        gpu = max((r["peak_gpu_mb"] or 0 for r in mine), default=None) or None
        figures["extrapolated"][method] = {"seconds": time_fit, "peak_rss_mb": rss_fit, "peak_gpu_mb": gpu}
        hours = time_fit["at_full_depth"] / 3600 if time_fit["at_full_depth"] is not None else None
        rss = rss_fit["at_full_depth"] / 1024 if rss_fit["at_full_depth"] is not None else None
        rows.append((method, fmt(time_fit["per_layer"]), fmt(time_fit["overhead"]), fmt(hours, ".2f"),
                     fmt(gpu, ".0f"), fmt(rss, ".1f")))
    print(f"\n{'tiny version of the ' if a.tiny else ''}LLaMA-3-{a.shape.upper()} layer shape on {device}, "
          f"{a.samples} x {a.seq_len} calibration tokens, group size {a.group_size} (BiLLM, PB-LLM, SliM-LLM: 128)")
    print(table(rows))
    if a.json:
        write_figures(a.json, figures)
        print(f"figures: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
