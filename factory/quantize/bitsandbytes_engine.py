"""NF4 and LLM.int8 through bitsandbytes, as transformers loads and saves them.

bitsandbytes quantizes while transformers loads the weights; the saved checkpoint holds the
packed weights and a `quantization_config` that transformers reads back.
"""

from __future__ import annotations

from pathlib import Path

from factory.recipe import Settings, bitsandbytes_skip_modules


def config(settings: Settings):
    import torch
    from transformers import BitsAndBytesConfig

    skip = bitsandbytes_skip_modules(settings.ignore)
    if settings.method == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def quantize(base_dir: Path, settings: Settings, out_dir: Path, recipe_dir: Path) -> dict:
    import torch

    from factory.quantize.common import load_preprocessor, model_class, peak_gpu_mb, reset_gpu_peak

    reset_gpu_peak()
    model = model_class(settings.kind).from_pretrained(
        base_dir, dtype=torch.bfloat16, quantization_config=config(settings),
        device_map="auto" if torch.cuda.is_available() else None,
    )
    model.save_pretrained(out_dir)
    load_preprocessor(settings.kind, base_dir).save_pretrained(out_dir)
    return {"engine": "bitsandbytes", "format": "bitsandbytes", "peak_gpu_mb": peak_gpu_mb(),
            "device": "cuda" if torch.cuda.is_available() else "cpu"}
