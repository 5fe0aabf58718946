#!/usr/bin/env python3
"""The baseline of bench/finetune_cpu.py: QLoRA written directly against transformers + peft +
bitsandbytes, without the factory (nothing of it is imported), as a user would write it.

The same base checkpoint, data (an Alpaca-format .jsonl), prompt template, loss mask, LoRA and
Trainer settings as the factory's finetune stage; it writes the adapter (and, with --merge, the
adapter merged into the 16-bit base), the loss history and its plot.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
PROMPT_NO_INPUT = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Response:\n")


def main() -> None:
    p = argparse.ArgumentParser()
    for name in ("base", "data", "out", "work"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--samples", type=int)
    p.add_argument("--r", type=int, required=True)
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--dropout", type=float, required=True)
    p.add_argument("--targets", nargs="+", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--scheduler", required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--accumulation", type=int, required=True)
    p.add_argument("--max-seq-len", type=int, required=True)
    p.add_argument("--max-grad-norm", type=float, required=True)
    p.add_argument("--save-steps", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--merge", action="store_true")
    args = p.parse_args()

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, DataCollatorForSeq2Seq,
                              Trainer, TrainingArguments, set_seed)

    started = time.perf_counter()
    records = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    records = records[:args.samples] if args.samples else records
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = []
    for r in records:
        text = (PROMPT_INPUT if r.get("input") else PROMPT_NO_INPUT).format(**r)
        source = tokenizer(text)["input_ids"][:max(1, args.max_seq_len * 3 // 4)]
        target = tokenizer(r["output"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        target = target[:args.max_seq_len - len(source)]
        examples.append({"input_ids": source + target, "attention_mask": [1] * (len(source) + len(target)),
                         "labels": [-100] * len(source) + target})

    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["lm_head"])
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32, quantization_config=nf4)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": True})
    set_seed(args.seed)
    model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout,
                                             target_modules=args.targets, bias="none", task_type="CAUSAL_LM"))
    model.config.use_cache = False
    training = TrainingArguments(
        output_dir=args.work, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.accumulation, learning_rate=args.lr, lr_scheduler_type=args.scheduler,
        max_grad_norm=args.max_grad_norm, weight_decay=0.0, seed=args.seed, data_seed=args.seed, logging_steps=1,
        save_strategy="steps", save_steps=args.save_steps, save_total_limit=2, report_to="none", use_cpu=True,
        optim="adamw_torch", dataloader_num_workers=0)
    trainer = Trainer(model=model, args=training, train_dataset=examples,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True))
    trainer.train()

    out = Path(args.out)
    history = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_loss.json").write_text(json.dumps({"steps": args.steps, "history": history}) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history])
    fig.savefig(out / "training_loss.png")
    plt.close(fig)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if args.merge:
        base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.bfloat16)
        PeftModel.from_pretrained(base, out).merge_and_unload().save_pretrained(out / "merged")
    print("BENCH_JSON " + json.dumps({"wall_time_s": round(time.perf_counter() - started, 2)}), flush=True)


if __name__ == "__main__":
    main()
