"""Loading a checkpoint and its tokenizer/processor for either model kind; GPU peak memory."""

from __future__ import annotations

from pathlib import Path


def model_class(kind: str):
    from transformers import AutoModelForCausalLM, LlavaNextForConditionalGeneration

    return LlavaNextForConditionalGeneration if kind == "llava-next" else AutoModelForCausalLM


def load_preprocessor(kind: str, path: Path):
    """The tokenizer (causal LM) or processor (LLaVA-Next) saved beside the checkpoint."""
    from transformers import AutoProcessor, AutoTokenizer

    return AutoProcessor.from_pretrained(path) if kind == "llava-next" else AutoTokenizer.from_pretrained(path)


def text_tokenizer(preprocessor):
    return getattr(preprocessor, "tokenizer", preprocessor)


def peak_gpu_mb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def reset_gpu_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def compute_dtype() -> str:
    """The dtype models are loaded in to quantize and evaluate them: the checkpoint's own ("auto")
    on a GPU or on a CPU with native bf16 arithmetic, float32 on a CPU without it, where bf16
    matmuls are emulated (6x slower than float32 on an AVX2 AMD EPYC, measured on 2026-11-26)."""
    import torch

    if torch.cuda.is_available():
        return "auto"
    native_bf16 = (getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                   or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return "auto" if native_bf16 else "float32"


def checkpoint_dtype(path: Path):
    """The torch dtype a checkpoint's config declares (bfloat16 when it declares none)."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    declared = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(declared, str):
        declared = getattr(torch, declared, None)
    return declared if isinstance(declared, torch.dtype) else torch.bfloat16


def bitsandbytes_skip_modules(ignore: list[str]) -> list[str]:
    """transformers matches bitsandbytes skip modules as a regex from the start of the module
    name, or as a name suffix: `re:.*vision_tower.*` -> `.*vision_tower.*`, `lm_head` stays."""
    return [p.removeprefix("re:") for p in ignore]


def nf4_config(compute_dtype, ignore: list[str], double_quant: bool = False):
    """bitsandbytes NF4 as transformers loads it (the nf4 method's config; QLoRA's base adds double quantization)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=bitsandbytes_skip_modules(ignore),
                              bnb_4bit_use_double_quant=double_quant)
