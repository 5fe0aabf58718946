"""The recipe's `finetune:` block: LoRA fine-tuning (methods qlora and ir-qlora) and its data."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from factory.recipe.fields import MAX_BATCH_SIZE, MAX_SAMPLES, MAX_SEED, MAX_SEQ_LEN, Strict
from factory.recipe.naming import git_ref

# LoRA fine-tuning (methods qlora, ir-qlora). Defaults: the Alpaca runs behind the paper's LoRA-FT
# table, checked against the official code (the papers' PDFs are not reachable from this project's
# machines). Huang et al. 2024 fine-tuned with IR-QLoRA's code: their evaluation script
# (github.com/Macaronlin/LLaMA3-Quantization, scripts/eval_irqlora_commonsenseqa.sh) loads
# IR-QLoRA/output/llama-3-8b-irqlora/checkpoint-10000, the output of IR-QLoRA's scripts/finetune.sh
# (github.com/htqin/IR-QLoRA, Qin et al. 2024, arXiv:2402.05445). That script and QLoRA's Alpaca
# command (github.com/artidoro/qlora, scripts/finetune.sh and qlora.py's defaults; Dettmers et al. 2023,
# arXiv:2305.14314) agree on: Alpaca (tatsu-lab/alpaca), LoRA on every linear layer of the decoder,
# r = 64, alpha = 16, LoRA dropout 0 (neither script sets it; the code default is 0.0 -- the 0.1/0.05 of
# QLoRA's scripts/finetune_guanaco_*.sh is its Guanaco/OASST1 setting), learning rate 2e-4 (QLoRA's README:
# 1e-4 above 13B), constant schedule, max gradient norm 0.3, 10,000 steps at an effective batch of 16
# (IR-QLoRA: 16 x 1; QLoRA: 4 x 4; the default here, 1 x 16, is the same batch in the least memory),
# source 384 + target 128 tokens with the loss on the target only, weight decay 0, gradient
# checkpointing, seed 42 (transformers' default seed; the scripts' data_seed). Not carried over: the
# paged 32-bit AdamW (bitsandbytes pages optimizer state to CPU under GPU memory pressure; the update is
# AdamW's) and group_by_length (a speed-up).
LLAMA_LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MAX_LORA_RANK = 65536
MAX_STEPS = 10_000_000


class LoRA(Strict):
    r: int = Field(64, gt=0, le=MAX_LORA_RANK, description="LoRA rank (QLoRA: 64).")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha / r (QLoRA: 16).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input (the Alpaca runs of QLoRA and "
                           "IR-QLoRA: 0).")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LLAMA_LINEAR_LAYERS), min_length=1,
        description="Layer names (the last component, as peft matches them) that get an adapter. Default: "
        "every linear layer of a LLaMA decoder layer, as QLoRA. Checked against the model before training.")


class FineTuneData(Strict):
    source: Literal["alpaca", "file", "demo"] = Field(
        "alpaca", description="alpaca: the Alpaca dataset from the Hub (tatsu-lab/alpaca); file: a local "
        "Alpaca-format .json (a list) or .jsonl (instruction, input, output); demo: the small set shipped with "
        "the factory (offline; smoke data).")
    path: str | None = Field(None, description="With source: file. Relative paths are relative to the recipe file.")
    revision: str = Field("main", min_length=1, description="With source: alpaca. The dataset repo's branch, tag or "
                          "40-hex commit; the commit it resolves to is recorded in the manifest and the card (pin a "
                          "commit to make a rebuild read the same data).")
    samples: int | None = Field(None, gt=0, le=MAX_SAMPLES * 10, description="Use only the first N records.")

    @field_validator("revision")
    @classmethod
    def _git_ref(cls, value: str) -> str:
        return git_ref(value)

    @model_validator(mode="after")
    def _revision_is_for_the_hub(self) -> "FineTuneData":
        if "revision" in self.model_fields_set and self.source != "alpaca":
            raise ValueError(f"revision applies to source: alpaca (the Hub dataset), not source: {self.source}")
        return self


class FineTune(Strict):
    data: FineTuneData = FineTuneData()
    template: Literal["alpaca"] = Field(
        "alpaca", description="Prompt template: alpaca (Stanford Alpaca's, with and without input).")
    lora: LoRA = LoRA()
    max_steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="Optimizer steps (replaces epochs).")
    epochs: float | None = Field(None, gt=0, le=1000, description="Passes over the data, when max_steps is unset "
                                 "(default: 1).")
    learning_rate: float = Field(2e-4, gt=0, le=1.0, description="Peak learning rate (QLoRA: 2e-4).")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule (QLoRA: constant).")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps warming up (schedules with warmup).")
    batch_size: int = Field(1, gt=0, le=MAX_BATCH_SIZE, description="Sequences per device per micro-step.")
    gradient_accumulation: int = Field(16, gt=0, le=MAX_BATCH_SIZE,
                                       description="Micro-steps per optimizer step (effective batch = batch_size x this).")
    max_seq_len: int = Field(512, gt=0, le=MAX_SEQ_LEN, description="Tokens per example, prompt and response "
                             "(QLoRA: 384 + 128); longer ones are cut.")
    max_grad_norm: float = Field(0.3, gt=0, description="Gradient clipping (QLoRA: 0.3).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (QLoRA: 0).")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass (QLoRA: on).")
    save_steps: int = Field(100, gt=0, le=MAX_STEPS, description="Checkpoint every N steps; a killed run resumes "
                            "from the last one.")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed of the adapter's initialisation and the data order "
                      "(the QLoRA and IR-QLoRA scripts: 42).")
    merge: bool = Field(False, description="Also publish the adapter merged into the 16-bit base (merged/) "
                        "(qlora; ir-qlora always publishes merged weights).")
