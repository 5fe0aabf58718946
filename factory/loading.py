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
