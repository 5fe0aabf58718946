#!/usr/bin/env python3
"""GPTQ and AWQ at the LLaMA-3-70B layer shape, a few layers, extrapolated to 80: what a 70B build costs.

LLaMA-3-70B: hidden 8192, intermediate 28672, 64 attention heads, 8 KV heads, vocabulary 128256,
80 layers. A randomly initialised checkpoint of that shape but only a few layers is built on the
GPU (gpu_gptq_shapes.py's builder, its own process), then `factory quantize` runs GPTQ and AWQ
W4A16-g128 on it, each in its own process, at two depths. llm-compressor calibrates one layer at a
time (sequential onloading), so wall time grows by a fixed amount per layer:

    t(L) = overhead + L * per_layer   ->   t(80) = overhead + 80 * per_layer

fitted through the two depths (or t(L) * 80 / L from one). Peak GPU memory is per layer and does not
grow with depth; peak RSS grows with the model held on the CPU and is extrapolated the same way.

    python bench/gpu_70b_layers.py --json bench/results/70b.json       # GPU: depths 2 and 4, 32 x 2048
    python bench/gpu_70b_layers.py --tiny                               # CPU smoke test, scaled-down shape

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

from measure import bench_env, fmt, run_child, table  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHAPES = HERE / "gpu_gptq_shapes.py"
FULL_LAYERS = 80
SHAPE_70B = {"hidden": 8192, "intermediate": 28672, "heads": 64, "kv_heads": 8, "vocab": 128256}
SHAPE_TINY = {"hidden": 256, "intermediate": 896, "heads": 8, "kv_heads": 2, "vocab": 1024}
METHOD_BLOCKS = {"gptq": "gptq: {dampening_frac: 0.01}\n", "awq": ""}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", default="2,4", help="layer counts to time, comma-separated (two give the fit)")
    p.add_argument("--methods", default="gptq,awq")
    p.add_argument("--samples", type=int, default=32, help="calibration windows (the recipes use 128)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--tiny", action="store_true", help="scaled-down shape on whatever device is there (a smoke test)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--keep", action="store_true")
    return p.parse_args(argv)


def recipe(method: str, checkpoint: Path, a: argparse.Namespace) -> str:
    return textwrap.dedent(f"""\
        name: bench-70b-{method}
        method: {method}
        weights: {{bits: 4, group_size: {a.group_size}, symmetric: true}}
        calibration: {{source: file, path: calibration.txt, samples: {a.samples}, seq_len: {a.seq_len}, seed: 2}}
        models:
          - {{id: bench/random-70b-shape, source: local, path: {checkpoint}, kind: causal-lm}}
        """) + METHOD_BLOCKS[method]


def fit(points: list[tuple[int, float | None]]) -> dict:
    """overhead + per_layer * L through the measured (depth, value) points; the value at 80 layers."""
    points = [(d, v) for d, v in points if v is not None]
    if not points:
        return {"per_layer": None, "overhead": None, "at_80_layers": None}
    if len(points) == 1:
        (d, v), = points
        return {"per_layer": v / d, "overhead": None, "at_80_layers": v * FULL_LAYERS / d}
    (d1, v1), (d2, v2) = points[0], points[-1]
    per_layer = (v2 - v1) / (d2 - d1)
    if per_layer <= 0:  # the deeper run was not slower: noise swamps the per-layer cost at this size
        return {"per_layer": v2 / d2, "overhead": None, "at_80_layers": v2 * FULL_LAYERS / d2,
                "note": f"no growth from {d1} to {d2} layers (noise); the deepest run scaled: an upper bound"}
    overhead = v1 - per_layer * d1
    return {"per_layer": per_layer, "overhead": overhead, "at_80_layers": overhead + per_layer * FULL_LAYERS}


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not a.tiny:
        print("no CUDA device: skipping the 70B-layer benchmark (--tiny runs a scaled-down shape as a smoke test)")
        return 0
    shape = SHAPE_TINY if a.tiny else SHAPE_70B
    if a.tiny:
        a.samples, a.seq_len, a.group_size = min(a.samples, 4), min(a.seq_len, 64), min(a.group_size, 64)
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    depths = sorted({int(d) for d in a.depths.split(",")})
    methods = a.methods.split(",")
    env = bench_env()
    scratch = Path(tempfile.mkdtemp(prefix="factory-bench-70b-"))
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
            print(f"built a {depth}-layer checkpoint of the 70B layer shape{' (tiny)' if a.tiny else ''} "
                  f"in {time.perf_counter() - started:.0f} s", flush=True)
            for method in methods:
                work = scratch / f"{method}-{depth}"
                recipe_file = inputs / f"{method}-{depth}.yaml"
                recipe_file.write_text(recipe(method, checkpoint, a))
                print(f"{method} at {depth} layers ...", end=" ", flush=True)
                run = run_child(method, [sys.executable, "-m", "factory.cli", "quantize", str(recipe_file),
                                         "--workdir", str(work)], work / "log.txt", env, cwd=REPO)
                manifest = work / "builds" / f"bench-70b-{method}" / "bench--random-70b-shape" / "manifest.json"
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

    figures = {"device": device, "date": time.strftime("%Y-%m-%d", time.gmtime()), "tiny": a.tiny, "shape": shape,
               "samples": a.samples, "seq_len": a.seq_len, "group_size": a.group_size, "runs": runs,
               "extrapolated": {}}
    rows = [("method", "per layer s", "overhead s", f"{FULL_LAYERS} layers (h)", "peak GPU MB",
             f"RSS at {FULL_LAYERS} layers (GB)")]
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        time_fit = fit([(r["layers"], r["stage_s"]) for r in mine])
        rss_fit = fit([(r["layers"], r["peak_rss_mb"]) for r in mine])
        gpu = max((r["peak_gpu_mb"] or 0 for r in mine), default=None) or None
        figures["extrapolated"][method] = {"seconds": time_fit, "peak_rss_mb": rss_fit, "peak_gpu_mb": gpu}
        hours = time_fit["at_80_layers"] / 3600 if time_fit["at_80_layers"] is not None else None
        rss = rss_fit["at_80_layers"] / 1024 if rss_fit["at_80_layers"] is not None else None
        rows.append((method, fmt(time_fit["per_layer"]), fmt(time_fit["overhead"]), fmt(hours, ".2f"),
                     fmt(gpu, ".0f"), fmt(rss, ".1f")))
    print(f"\n{'tiny shape' if a.tiny else 'LLaMA-3-70B layer shape'} on {device}, {a.samples} x {a.seq_len} "
          f"calibration tokens, W4A16-g{a.group_size}")
    print(table(rows))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
