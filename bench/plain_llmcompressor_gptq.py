#!/usr/bin/env python3
"""GPTQ W4A16 with llm-compressor alone: the baseline the factory is benchmarked against.

Does what `factory quantize` does for a GPTQ recipe, without importing the factory:
tokenize one calibration text, draw `samples` random windows of `seq_len` tokens with
`random.Random(seed)` (as factory.engines.calibration.calibration_windows and GPTQ's get_wikitext2
do), run `oneshot` with a GPTQModifier, save compressed-tensors plus the tokenizer/processor.

The defaults are the factory's offline demo (recipes/demo-smollm2-gptq-4bit.yaml): the
SmolLM2 bf16 checkpoint the factory converted into $FACTORY_CACHE, the bundled demo text,
64 x 512 tokens, group size 64. bench/gpu_gptq_shapes.py reuses it with other arguments.

The last stdout line is `BENCH_JSON {...}` with the in-process time and peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_TEXT = REPO / "factory" / "data" / "demo_calibration.txt"


def default_base() -> Path:
    """Where the factory caches the converted SmolLM2 (the path only; the plain side runs no factory code)."""
    from factory.engines.base_models import _smollm2_cache_dir

    return _smollm2_cache_dir()


def calibration_windows(ids: list[int], samples: int, seq_len: int, seed: int) -> list[list[int]]:
    """Random start positions with a fixed seed; the same draw as the factory's."""
    if len(ids) <= seq_len:
        sys.exit(f"calibration text has {len(ids)} tokens, fewer than seq_len {seq_len}")
    rng = random.Random(seed)
    windows = []
    for _ in range(samples):
        start = rng.randint(0, len(ids) - seq_len - 1)
        windows.append(list(ids[start:start + seq_len]))
    return windows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, default=None,
                   help="bf16 checkpoint dir (default: the factory's SmolLM2 cache)")
    p.add_argument("--out", type=Path, required=True, help="output dir for the compressed checkpoint")
    p.add_argument("--text", type=Path, default=DEMO_TEXT, help="calibration text file")
    p.add_argument("--kind", choices=["causal-lm", "llava-next"], default="causal-lm")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--dampening-frac", type=float, default=0.01)
    p.add_argument("--ignore", nargs="*", default=None,
                   help="modules kept in full precision "
                   "(default: lm_head, plus the vision tower and projector for llava-next)")
    args = p.parse_args(argv)

    # Heavy imports after argument parsing, as the factory CLI does, so --help stays fast. The
    # clock starts after torch, like the factory's quantize stage (whose modules import torch),
    # so the two in-process times cover the same work.
    import torch

    started = time.time()
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer, LlavaNextForConditionalGeneration

    base = args.base or default_base()
    llava = args.kind == "llava-next"
    ignore = args.ignore if args.ignore is not None else (
        ["lm_head", "re:.*vision_tower.*", "re:.*multi_modal_projector.*"] if llava else ["lm_head"])

    preprocessor = AutoProcessor.from_pretrained(base) if llava else AutoTokenizer.from_pretrained(base)
    tokenizer = getattr(preprocessor, "tokenizer", preprocessor)
    ids = tokenizer(args.text.read_text(encoding="utf-8", errors="replace"))["input_ids"]
    windows = calibration_windows(ids, args.samples, args.seq_len, args.seed)
    dataset = Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]})

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    model_cls = LlavaNextForConditionalGeneration if llava else AutoModelForCausalLM
    model = model_cls.from_pretrained(base, dtype="auto")

    weights = QuantizationArgs(num_bits=args.bits, type="int", symmetric=True, strategy="group",
                               group_size=args.group_size)
    recipe = [GPTQModifier(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
                           ignore=ignore, dampening_frac=args.dampening_frac)]
    oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=len(dataset),
            max_seq_length=args.seq_len, shuffle_calibration_samples=False)
    model.save_pretrained(args.out, save_compressed=True)
    preprocessor.save_pretrained(args.out)

    peak_gpu = round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None
    print("BENCH_JSON " + json.dumps({"wall_time_s": round(time.time() - started, 2), "peak_gpu_mb": peak_gpu,
                                      "device": "cuda" if torch.cuda.is_available() else "cpu"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
