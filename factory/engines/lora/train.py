"""LoRA fine-tuning, the engine under QLoRA and IR-QLoRA: Alpaca records -> a trained adapter in a folder.

transformers' Trainer (its progress bar and loss log) trains whatever adapter the method attaches
(`AdapterRecipe.attach`), the loss on the response tokens only (QLoRA's Alpaca setting), and the
method saves it (`AdapterRecipe.save`). Checkpoints go to `work_dir`, outside the output folder, so
a killed run resumes from the last one; the caller removes `work_dir` once the output is complete.

Nothing here knows the pipeline: the inputs are a base checkpoint folder, the recipe's `finetune:`
block and the records; the output is the folder and the figures returned.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Protocol

from factory.core.errors import UserError
from factory.engines.loading import peak_gpu_mb, reset_gpu_peak
from factory.engines.lora.data import prompt

LOSS_JSON = "training_loss.json"
LOSS_PNG = "training_loss.png"


class AdapterRecipe(Protocol):
    """What a LoRA method gives the engine: how the trainable model is made and how it is saved."""

    title: str  # the loss plot's title ("QLoRA")
    figures: dict  # the method's own manifest figures (engine, format, base_quantization)

    def attach(self, base_dir: Path, ft) -> tuple: ...  # (model with its trainable adapter, compute dtype)

    def save(self, model, tokenizer, base_dir: Path, out: Path, ft, log) -> None: ...


def linear_layer_names(base_dir: Path) -> set[str]:
    """The last name component of every nn.Linear of the model, built on the meta device (no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name.rpartition(".")[2] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def check_targets(targets: list[str], base_dir: Path, model_id: str) -> None:
    layers = linear_layer_names(base_dir)
    missing = [t for t in targets if t not in layers]
    if missing:
        raise UserError(f"finetune.lora.target_modules: {', '.join(missing)} match{'es' if len(missing) == 1 else ''} "
                        f"no layer of {model_id} (its linear layers: {', '.join(sorted(layers))})")


def encode(records: list[dict], tokenizer, max_seq_len: int, template: str = "alpaca") -> list[dict]:
    """Prompt + response token ids, the loss on the response only. As QLoRA cuts Alpaca to 384 source
    and 128 target tokens, the prompt keeps at most 3/4 of max_seq_len and the response the rest."""
    out = []
    source_cap = max(1, (max_seq_len * 3) // 4)
    for record in records:
        source = tokenizer(prompt(record, template), add_special_tokens=True)["input_ids"][:source_cap]
        target = tokenizer(record["output"] + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
        target = target[:max_seq_len - len(source)]
        out.append({"input_ids": source + target, "attention_mask": [1] * (len(source) + len(target)),
                    "labels": [-100] * len(source) + target})
    return out


def total_steps(ft, n_examples: int) -> int:
    if ft.max_steps is not None:
        return ft.max_steps
    per_epoch = math.ceil(n_examples / (ft.batch_size * ft.gradient_accumulation))
    return max(1, math.ceil(per_epoch * (ft.epochs or 1.0)))


def training_arguments(ft, work_dir: Path, steps: int):
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(work_dir), max_steps=steps, per_device_train_batch_size=ft.batch_size,
        gradient_accumulation_steps=ft.gradient_accumulation, learning_rate=ft.learning_rate,
        lr_scheduler_type=ft.lr_scheduler, warmup_steps=math.ceil(ft.warmup_ratio * steps)
        if ft.lr_scheduler != "constant" else 0,
        max_grad_norm=ft.max_grad_norm, weight_decay=ft.weight_decay, seed=ft.seed, data_seed=ft.seed,
        logging_steps=1, save_strategy="steps", save_steps=ft.save_steps, save_total_limit=2,
        report_to="none", disable_tqdm=False, use_cpu=not cuda, bf16=cuda,
        optim="paged_adamw_32bit" if cuda else "adamw_torch",  # QLoRA's paged optimizer where it exists
        dataloader_num_workers=0, gradient_checkpointing=False,  # enabled on the model (below) when asked
    )


def train(adapter: "AdapterRecipe", base_dir: Path, ft, records: list[dict], out: Path, work_dir: Path, log=print) -> dict:
    import time

    import torch
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer
    from transformers.trainer_utils import get_last_checkpoint

    reset_gpu_peak()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = encode(records, tokenizer, ft.max_seq_len, ft.template)
    steps = total_steps(ft, len(examples))
    model, dtype = adapter.attach(base_dir, ft)
    model.config.use_cache = False

    work_dir.mkdir(parents=True, exist_ok=True)
    last = get_last_checkpoint(str(work_dir))
    if last:
        log(f"  finetune: resuming from {Path(last).name}")
    trainer = Trainer(model=model, args=training_arguments(ft, work_dir, steps), train_dataset=examples,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True))
    started = time.time()
    result = trainer.train(resume_from_checkpoint=last)
    train_time = time.time() - started

    history = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
    (out / LOSS_JSON).write_text(json.dumps({"steps": steps, "history": history}, indent=1) + "\n")
    plot_loss(history, out / LOSS_PNG, f"{adapter.title} fine-tuning loss")

    adapter.save(model, tokenizer, base_dir, out, ft, log)
    return {
        **adapter.figures,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "peak_gpu_mb": peak_gpu_mb(),
        "train_steps": trainer.state.global_step,
        "train_examples": len(examples),
        "train_tokens": sum(len(e["input_ids"]) for e in examples),
        "train_time_s": round(train_time, 2),
        "resumed_from_step": int(Path(last).name.split("-")[-1]) if last else None,
        "final_loss": history[-1]["loss"] if history else None,
        "train_loss": round(result.training_loss, 5),
        "compute_dtype": str(dtype).removeprefix("torch."),
        "lora_rank": ft.lora.r,
    }


def save_merged(base_dir: Path, adapter: Path, target: Path, dtype, tokenizer) -> None:
    """The adapter merged into the 16-bit base (what peft's merge_and_unload gives), as a plain checkpoint."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)


def plot_loss(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version string: the same curve, the same bytes
    plt.close(fig)
