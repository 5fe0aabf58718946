"""The finetune stage: base checkpoint + Alpaca-format data -> builds/<recipe>/<model>/model/.

QLoRA: the base loaded in NF4 by bitsandbytes (the nf4 method's config, double-quantized),
prepared with peft's `prepare_model_for_kbit_training`, a peft LoRA adapter on the recipe's target
modules. IR-QLoRA: the targeted weights replaced by their ICQ-dequantized values and wrapped in
elastic LoRA (factory.engines.lora.icq, iec). Both train with transformers' Trainer (its progress bar
and loss log), the loss on the response tokens only (QLoRA's Alpaca setting).

Checkpoints: the Trainer saves one every `save_steps` steps in builds/<recipe>/<model>/
.finetune-work/<fingerprint>/, outside the stage's partial folder, so a killed run (Ctrl-C,
SIGKILL, a lost machine) resumes from the last one when run again with the same fingerprint; the
folder is removed once the stage is done.

Checked before anything is written (one line, exit 2): the data (an Alpaca-format file, in
`check_recipe`), and that every target module names a linear layer of the model.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from factory.pipeline.build import Build, StageResult, run_stage
from factory.core.errors import UserError
from factory.engines.base_models import fetch_base, weights_size
from factory.stages.artifact import write_build_recipe

LOSS_JSON = "training_loss.json"
LOSS_PNG = "training_loss.png"
WORK = ".finetune-work"


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


def finetune(build: Build, log=print) -> StageResult:
    """Fine-tune one (recipe, model), or skip it when a finished build has the same fingerprint."""
    from factory.engines.lora.data import alpaca_commit, describe, load_records

    settings = build.settings
    ft = settings.finetune
    if build.method.stage != "finetune" or ft is None:
        raise UserError(f"{build.label}: method {build.recipe.method} is built by `factory quantize`, not `finetune`")
    if build.stage_done("finetune"):
        return run_stage(build, "finetune", lambda out: {})  # finds it done, skips
    # Checked before the stage starts: a bad target list or data file leaves no trace in the build.
    base = fetch_base(build.entry, build.recipe_dir)
    check_targets(ft.lora.target_modules, base.path, build.entry.id)
    data_path = build.recipe_dir / ft.data.path if ft.data.path else None
    commit = alpaca_commit(ft.data.revision) if ft.data.source == "alpaca" else None
    records = load_records(ft.data.source, data_path, ft.data.samples, revision=commit)
    work_dir = build.dir / WORK / build.fingerprint()

    def work(out: Path) -> dict:
        figures = build.method.train(base.path, settings, records, out, work_dir, log)
        figures["data"] = describe(ft.data.source, ft.data.path, len(records), commit)
        if commit:
            figures["data_commit"] = commit
        _point_adapter_at_hub_base(out, build)
        write_build_recipe(out, build)
        return {**figures, "base_model_path": str(base.path), "base_revision": base.revision,
                "size_bytes": weights_size(out), "base_size_bytes": base.size_bytes(), "compression_ratio": None}

    result = run_stage(build, "finetune", work)
    shutil.rmtree(build.dir / WORK, ignore_errors=True)  # the checkpoints of a finished run
    return result


def _point_adapter_at_hub_base(out: Path, build: Build) -> None:
    """peft records the local base path; the published adapter names the Hub base (and its revision)."""
    config = out / "adapter_config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        data["base_model_name_or_path"] = build.entry.id
        data["revision"] = build.entry.revision
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------- training


def encode(records: list[dict], tokenizer, max_seq_len: int, template: str = "alpaca") -> list[dict]:
    """Prompt + response token ids, the loss on the response only. As QLoRA cuts Alpaca to 384 source
    and 128 target tokens, the prompt keeps at most 3/4 of max_seq_len and the response the rest."""
    from factory.engines.lora.data import prompt

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


def build_model(method, base_dir: Path, ft):
    """The model with its trainable adapter: (model, dtype)."""
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    from factory.engines.loading import compute_dtype

    dtype = torch.float32 if compute_dtype() == "float32" else torch.bfloat16
    lora = ft.lora
    if method.name == "qlora":
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        model = AutoModelForCausalLM.from_pretrained(
            base_dir, dtype=dtype, quantization_config=method.bnb_config(dtype),
            device_map="auto" if torch.cuda.is_available() else None)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=ft.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": True})
        set_seed(ft.seed)
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=list(lora.target_modules), bias="none",
                                                 task_type="CAUSAL_LM"))
    else:  # ir-qlora
        from factory.engines.lora.iec import apply_elastic_lora

        model = AutoModelForCausalLM.from_pretrained(
            base_dir, dtype=dtype, device_map="auto" if torch.cuda.is_available() else None)
        set_seed(ft.seed)
        apply_elastic_lora(model, lora.target_modules, r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                           quantize_base=True)
        if ft.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            model.enable_input_require_grads()
    model.config.use_cache = False
    return model, dtype


def train(method, base_dir: Path, settings, records: list[dict], out: Path, work_dir: Path, log=print) -> dict:
    import time

    import torch
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer
    from transformers.trainer_utils import get_last_checkpoint

    from factory.engines.loading import checkpoint_dtype, peak_gpu_mb, reset_gpu_peak

    ft = settings.finetune
    reset_gpu_peak()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = encode(records, tokenizer, ft.max_seq_len, ft.template)
    steps = total_steps(ft, len(examples))
    model, dtype = build_model(method, base_dir, ft)

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
    plot_loss(history, out / LOSS_PNG, f"{method.paper_name} fine-tuning loss")

    base_dtype = checkpoint_dtype(base_dir)
    if method.name == "qlora":
        model.save_pretrained(out)
        (out / "README.md").unlink(missing_ok=True)  # peft's stub card; the card stage writes the real one
        tokenizer.save_pretrained(out)
        if ft.merge:
            _save_merged(base_dir, out, out / "merged", base_dtype, tokenizer)
    else:
        from factory.engines.lora.iec import merge_elastic_lora

        model.eval()
        merged = merge_elastic_lora(model)
        if ft.gradient_checkpointing:
            model.gradient_checkpointing_disable()
        model.config.use_cache = True
        model.to(base_dtype).save_pretrained(out)
        tokenizer.save_pretrained(out)
        log(f"  finetune: merged {merged} elastic LoRA layers into the ICQ-dequantized base")
    return {
        "engine": "transformers Trainer + peft" if method.name == "qlora" else "transformers Trainer + factory IR-QLoRA",
        "format": method.output_format,
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
        "base_quantization": "nf4" if method.name == "qlora" else None,
        "lora_rank": ft.lora.r,
    }


def _save_merged(base_dir: Path, adapter: Path, target: Path, dtype, tokenizer) -> None:
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
