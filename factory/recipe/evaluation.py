"""The recipe's `evaluation:` block: the suite, the harness settings, the quality gates and the speed stage."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from factory.recipe.fields import (MAX_BATCH_SIZE, MAX_FEWSHOT, MAX_LIMIT, MAX_PPL_RATIO, MAX_RECOVERY, MAX_SEED,
                                   MAX_SEQ_LEN, BatchSize, Strict)


class Gate(Strict):
    min_recovery: float | None = Field(None, gt=0, le=MAX_RECOVERY,
                                       description="Lowest acceptable recovery (quantized/base for accuracy).")
    max_ppl_ratio: float | None = Field(None, gt=0, le=MAX_PPL_RATIO,
                                        description="Highest acceptable perplexity ratio (quantized/base).")


class Gates(Gate):
    """Overall limits, plus per-task limits that replace them for that task."""

    tasks: dict[str, Gate] = Field(default_factory=dict)


PerplexityDataset = Literal["wikitext2", "c4", "ptb", "demo"]


class RuntimeQuality(Strict):
    """Quality of a GGUF build measured in llama.cpp against the base's F16 GGUF (factory.stages.speed.runtime_quality)."""

    windows: int = Field(4, gt=0, le=64, description="Windows of the held-out text scored.")
    window_tokens: int = Field(128, ge=2, le=4096, description="Tokens per window (each position after the first is scored).")
    top_k: int = Field(40, gt=0, le=1000, description="Next-token probabilities read per position (for KL and top-1).")


class Speed(Strict):
    """Speed and memory of the build and its base model in the runtime a user would use (factory.stages.speed)."""

    enabled: bool = Field(True, description="Measure speed and memory (the `speed` stage; shown in the card).")
    batch_sizes: list[Annotated[int, Field(gt=0, le=MAX_BATCH_SIZE)]] = Field(
        [1, 16], min_length=1, max_length=8, description="Batch sizes to measure prefill and decode at.")
    prompt_tokens: int = Field(512, gt=0, le=MAX_SEQ_LEN, description="Prompt length, in tokens (random token ids).")
    new_tokens: int = Field(128, ge=2, le=MAX_SEQ_LEN, description="Tokens decoded greedily after each prompt.")
    runtime: Literal["auto", "transformers", "vllm", "llama.cpp"] = Field(
        "auto", description="auto: llama.cpp for a GGUF build, vLLM on a GPU when installed, "
        "else transformers. Naming a runtime that is not installed here is an error.")
    quality: RuntimeQuality = Field(default_factory=RuntimeQuality, description=(
        "For GGUF builds in llama.cpp: perplexity, KL divergence and top-1 agreement against the base's F16 GGUF."))


class Evaluation(Strict):
    suite: Literal["paper", "smoke"] = Field(
        "paper", description="paper: the paper's tasks (need the Hub's datasets); smoke: small sets bundled "
        "with the factory, offline (smoke figures, not benchmark figures).")
    tasks: list[str] | None = Field(
        None, description="Harness task names (lm-eval for causal-lm, lmms-eval for llava-next) replacing the suite's.")
    perplexity: list[PerplexityDataset] | None = Field(
        None, description="Datasets for the paper-protocol perplexity, replacing the suite's ([] for none).")
    perplexity_seq_len: int = Field(2048, gt=0, le=MAX_SEQ_LEN,
                                    description="Window length of the paper-protocol perplexity.")
    backend: Literal["hf", "vllm"] = Field("hf", description="hf (CPU or GPU) or vllm (GPU, where installed).")
    batch_size: BatchSize = Field(8, description=f"Harness batch size (1 to {MAX_BATCH_SIZE}, or auto).")
    limit: int | None = Field(None, gt=0, le=MAX_LIMIT, description="Evaluate only the first N examples of each task.")
    num_fewshot: int | None = Field(
        None, ge=0, le=MAX_FEWSHOT, description="Few-shot examples for every task. Default: the suite's protocol "
        "(paper: 0-shot, MMLU 5-shot as the paper's LoRA-FT table; smoke: 0-shot).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Harness seed (sampling of few-shot examples, bootstrap).")
    gates: Gates | None = None
    speed: Speed = Speed()
