#!/usr/bin/env python3
"""GPTQ W4A16-g128 at LLaMA-3-8B (or LLaVA-Next-8B) shape: `factory quantize` vs plain llm-compressor, on a GPU.

No weights are downloaded: a randomly initialised checkpoint with the real model's shape is
built once (its own process), with a word-level tokenizer over the full vocabulary so that
random-token calibration text maps to uniformly random token ids. Then, each in its own
process and in alternating order:

  (a) `factory quantize <generated recipe> --workdir <tmp>` (source: local, calibration: file);
  (b) bench/plain_llmcompressor_gptq.py with the same checkpoint, text, windows and modifier.

Reported per side: wall time (spawn to exit), peak GPU memory (torch.cuda.max_memory_allocated
in the child: the factory's manifest, the plain script's BENCH_JSON line) and peak RSS.

    python bench/gpu_gptq_shapes.py                          # LLaMA-3-8B shape, 128 x 2048 tokens
    python bench/gpu_gptq_shapes.py --model llava-next --samples 32 --seq-len 512
    python bench/gpu_gptq_shapes.py --allow-cpu --layers 2 --hidden 256 --intermediate 512 \\
        --heads 4 --kv-heads 2 --vocab 1024 --samples 4 --seq-len 64      # logic smoke test, CPU

Without CUDA (and without --allow-cpu) it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub

from measure import finish, Run, alternating, bench_env, fmt, median, ratio, run_child, same_weights, table, verdict

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PLAIN = HERE / "plain_llmcompressor_gptq.py"
TIME_TARGET, MEMORY_TARGET = 1.05, 1.10
CPU_PARAM_LIMIT = 300e6  # --allow-cpu is for logic checks; an 8B model on a CPU would take hours
SPECIALS = ["<s>", "</s>", "<pad>", "<unk>"]  # ids 0..3; calibration text draws from the rest
IMAGE_TOKEN = "<image>"
IGNORE = {"causal-lm": ["lm_head"],
          "llava-next": ["lm_head", "re:.*vision_tower.*", "re:.*multi_modal_projector.*"]}  # the factory's defaults
GRID_PINPOINTS = [[1, 2], [2, 1], [2, 2], [3, 1], [1, 3]]  # LLaVA-Next's, in units of image_size


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=["llama", "llava-next"], default="llama")
    p.add_argument("--samples", type=int, default=128, help="calibration windows")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per window")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=1, help="runs per side, alternating order (median reported)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--checkpoint", type=Path,
                   help="build the random checkpoint here, or reuse it if already built (default: a temp dir)")
    p.add_argument("--build-device", choices=["cpu", "cuda"], default="cpu",
                   help="where to run the random init (cuda is much faster for 8B; only the build uses it)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folders")
    p.add_argument("--allow-cpu", action="store_true", help="run without CUDA (tiny shapes only: a smoke test)")
    s = p.add_argument_group("text model shape (LLaMA-3-8B)")
    s.add_argument("--layers", type=int, default=32)
    s.add_argument("--hidden", type=int, default=4096)
    s.add_argument("--intermediate", type=int, default=14336)
    s.add_argument("--heads", type=int, default=32)
    s.add_argument("--kv-heads", type=int, default=8)
    s.add_argument("--vocab", type=int, default=128256)
    v = p.add_argument_group("vision tower shape, --model llava-next (CLIP ViT-L/14-336)")
    v.add_argument("--vision-layers", type=int, default=24)
    v.add_argument("--vision-hidden", type=int, default=1024)
    v.add_argument("--vision-intermediate", type=int, default=4096)
    v.add_argument("--vision-heads", type=int, default=16)
    v.add_argument("--image-size", type=int, default=336)
    v.add_argument("--patch", type=int, default=14)
    p.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)  # internal: the build child process
    return p.parse_args(argv)


def kind(args: argparse.Namespace) -> str:
    return "llava-next" if args.model == "llava-next" else "causal-lm"


def params_label(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def approx_params(a: argparse.Namespace) -> float:
    head_dim = a.hidden // a.heads
    layer = 2 * a.hidden * a.hidden + 2 * a.hidden * a.kv_heads * head_dim + 3 * a.hidden * a.intermediate
    total = a.layers * layer + 2 * a.vocab * a.hidden
    if a.model == "llava-next":
        total += a.vision_layers * (4 * a.vision_hidden**2 + 2 * a.vision_hidden * a.vision_intermediate)
    return float(total)


# ---------------------------------------------------------------- the random checkpoint (child process)


def build_checkpoint(a: argparse.Namespace, path: Path) -> None:
    """Random bf16 weights with the requested shape, plus a tokenizer (and processor) that load offline."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"t{i}": i for i in range(len(SPECIALS), a.vocab)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    llava = a.model == "llava-next"
    if llava:
        tok.add_special_tokens([IMAGE_TOKEN])  # id a.vocab, as LLaVA-Next-8B's 128256
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>")

    # LLaVA-Next-8B pads its text vocabulary (128256 + image token) to a multiple of 64: 128320.
    text_vocab = -(-(a.vocab + 1) // 64) * 64 if llava else a.vocab
    text = LlamaConfig(vocab_size=text_vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                       num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                       max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    with torch.device(a.build_device):
        if llava:
            from transformers import (CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                                      LlavaNextImageProcessorPil, LlavaNextProcessor)

            vision = CLIPVisionConfig(hidden_size=a.vision_hidden, intermediate_size=a.vision_intermediate,
                                      num_hidden_layers=a.vision_layers, num_attention_heads=a.vision_heads,
                                      image_size=a.image_size, patch_size=a.patch, projection_dim=768)
            pinpoints = [[h * a.image_size, w * a.image_size] for h, w in GRID_PINPOINTS]
            config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=a.vocab,
                                     image_grid_pinpoints=pinpoints, vision_feature_layer=-2,
                                     vision_feature_select_strategy="default")
            model = LlavaNextForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
        else:
            model = LlamaForCausalLM._from_config(text, dtype=torch.bfloat16)
    model.save_pretrained(path)
    if llava:
        images = LlavaNextImageProcessorPil(size={"shortest_edge": a.image_size},
                                            crop_size={"height": a.image_size, "width": a.image_size},
                                            image_grid_pinpoints=pinpoints)
        LlavaNextProcessor(image_processor=images, tokenizer=tokenizer, patch_size=a.patch,
                           vision_feature_select_strategy="default").save_pretrained(path)
    else:
        tokenizer.save_pretrained(path)
    (path / ".complete").write_text("")


def calibration_text(a: argparse.Namespace, path: Path) -> None:
    """Uniformly random token ids (as words t<id>), enough for every window to start anywhere."""
    rng = random.Random(0)
    n = a.samples * a.seq_len + a.seq_len + 1
    path.write_text(" ".join(f"t{rng.randrange(len(SPECIALS), a.vocab)}" for _ in range(n)) + "\n")


def recipe_yaml(a: argparse.Namespace, checkpoint: Path) -> str:
    return textwrap.dedent(f"""\
        name: gpu-bench-gptq
        method: gptq
        weights: {{bits: 4, group_size: {a.group_size}, symmetric: true}}
        calibration: {{source: file, path: calibration.txt, samples: {a.samples}, seq_len: {a.seq_len}, seed: 2}}
        gptq: {{dampening_frac: 0.01}}
        models:
          - {{id: bench/random-{a.model}, source: local, path: {checkpoint}, kind: {kind(a)}}}
        """)


# ---------------------------------------------------------------- the benchmark (parent)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.build_only:
        build_checkpoint(a, a.build_only)
        return 0

    import torch

    # is_available() does not create a CUDA context, so the parent holds no GPU memory.
    cuda = torch.cuda.is_available()
    if not cuda and not a.allow_cpu:
        print("no CUDA device: skipping the GPU GPTQ benchmark (--allow-cpu with tiny shapes to smoke-test it)")
        return 0
    if not cuda and approx_params(a) > CPU_PARAM_LIMIT:
        sys.exit(f"--allow-cpu: ~{params_label(approx_params(a))} parameters is too big for a CPU smoke test; "
                 "pass tiny shapes (--layers 2 --hidden 256 --intermediate 512 --heads 4 --kv-heads 2 --vocab 1024)")
    if a.build_device == "cuda" and not cuda:
        sys.exit("--build-device cuda: no CUDA device")

    scratch = Path(tempfile.mkdtemp(prefix="factory-bench-gpu-"))
    checkpoint = (a.checkpoint or scratch / "checkpoint").resolve()  # the children run in the repo root
    env = bench_env()
    try:
        if not (checkpoint / ".complete").is_file():
            size = params_label(approx_params(a))
            print(f"building a random {a.model} checkpoint (~{size} params) in {checkpoint} ...", flush=True)
            shutil.rmtree(checkpoint, ignore_errors=True)
            checkpoint.mkdir(parents=True)
            subprocess.run([sys.executable, __file__, "--build-only", str(checkpoint), *(argv or sys.argv[1:])],
                           env=env, check=True)
        else:
            print(f"reusing {checkpoint}", flush=True)
        inputs = scratch / "inputs"
        inputs.mkdir()
        calibration_text(a, inputs / "calibration.txt")
        recipe = inputs / "recipe.yaml"
        recipe.write_text(recipe_yaml(a, checkpoint))

        plain_args = ["--base", str(checkpoint), "--text", str(inputs / "calibration.txt"), "--kind", kind(a),
                      "--samples", str(a.samples), "--seq-len", str(a.seq_len), "--seed", "2", "--bits", "4",
                      "--group-size", str(a.group_size), "--dampening-frac", "0.01", "--ignore", *IGNORE[kind(a)]]
        runs: list[Run] = []
        outputs: dict[str, Path] = {}
        for i, side in enumerate(alternating(a.repeats, "factory", "plain")):
            work = scratch / f"{i:02d}-{side}"
            print(f"[{i + 1}/{2 * a.repeats}] {side} ...", end=" ", flush=True)
            if side == "factory":
                exe = Path(sys.executable).parent / "factory"
                cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "factory.cli"]
                run = run_child(side, [*cmd, "quantize", str(recipe), "--workdir", str(work)], work / "log.txt", env,
                                cwd=REPO)
                build = work / "builds" / "gpu-bench-gptq" / f"bench--random-{a.model}"
                stage = json.loads((build / "manifest.json").read_text())["stages"]["quantize"]
                run.extra = {"wall_time_s": stage["wall_time_s"], "peak_gpu_mb": stage.get("peak_gpu_mb")}
                out = build / "model"
            else:
                out = work / "model"
                run = run_child(side, [sys.executable, str(PLAIN), "--out", str(out), *plain_args], work / "log.txt",
                                env, cwd=REPO)
            runs.append(run)
            print(f"{run.wall_s:.1f} s, GPU {fmt(run.extra.get('peak_gpu_mb'), '.0f')} MB, "
                  f"RSS {run.peak_rss_mb:.0f} MB", flush=True)
            if side in outputs:
                shutil.rmtree(out, ignore_errors=True)  # one output per side is enough; 8B outputs fill disks
            else:
                outputs[side] = out
        same = same_weights(outputs["factory"], outputs["plain"])
    finally:
        if a.keep:
            print(f"kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    figures = summarize(a, runs, same, torch.cuda.get_device_name() if cuda else "cpu")
    return finish(report(figures), figures, a.json)


METRICS = ("wall_s", "in_process_s", "peak_gpu_mb", "peak_rss_mb")


def summarize(a: argparse.Namespace, runs: list[Run], same: bool, device: str) -> dict:
    def values(side: str, metric: str) -> list[float | None]:
        pick = {"wall_s": lambda r: r.wall_s, "peak_rss_mb": lambda r: r.peak_rss_mb,
                "in_process_s": lambda r: r.extra.get("wall_time_s"),
                "peak_gpu_mb": lambda r: r.extra.get("peak_gpu_mb")}
        return [pick[metric](r) for r in runs if r.side == side]

    med = {side: {m: median(values(side, m)) for m in METRICS} for side in ("factory", "plain")}
    ratios = {m: ratio(med["factory"][m], med["plain"][m]) for m in METRICS}
    targets = {"wall_s": TIME_TARGET, "peak_gpu_mb": MEMORY_TARGET, "peak_rss_mb": MEMORY_TARGET}
    return {
        "model": a.model, "device": device, "approx_params": approx_params(a),
        "shape": {k: getattr(a, k) for k in ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab")},
        "calibration": {"samples": a.samples, "seq_len": a.seq_len}, "group_size": a.group_size,
        "repeats": a.repeats,
        "runs": [{"side": r.side, "wall_s": r.wall_s, "peak_rss_mb": r.peak_rss_mb, **r.extra} for r in runs],
        "median": med, "ratio_factory_over_plain": ratios, "targets": targets,
        "verdict": {m: verdict(ratios[m], t) for m, t in targets.items()},
        "identical_weights": same,
    }


def report(f: dict) -> str:
    med, r, t, v = f["median"], f["ratio_factory_over_plain"], f["targets"], f["verdict"]
    labels = {"wall_s": ("wall time s", ".1f"), "in_process_s": ("in-process s *", ".1f"),
              "peak_gpu_mb": ("peak GPU MB", ".0f"), "peak_rss_mb": ("peak RSS MB", ".0f")}
    rows = [("", "factory", "plain", "factory/plain", "target", "")]
    for m in METRICS:
        label, spec = labels[m]
        rows.append((label, fmt(med["factory"][m], spec), fmt(med["plain"][m], spec), fmt(r[m], ".3f"),
                     f"<= {t[m]:.2f}" if m in t else "", v.get(m, "")))
    head = (f"GPTQ W4A16-g{f['group_size']} on a random {f['model']} (~{params_label(f['approx_params'])} params), "
            f"{f['calibration']['samples']} x {f['calibration']['seq_len']} tokens, {f['device']}, "
            f"median of {f['repeats']} run(s) per side")
    notes = ["* the factory manifest's quantize stage time and the plain script's own clock, both started once "
             "torch is imported (informational)",
             f"identical quantized weights on both sides: {'yes' if f['identical_weights'] else 'no'}"
             + ("" if f["identical_weights"] else " (GPU kernels need not be bitwise deterministic)")]
    return "\n".join([head, table(rows), *notes])


if __name__ == "__main__":
    sys.exit(main())
