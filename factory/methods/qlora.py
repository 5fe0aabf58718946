"""QLoRA (Dettmers et al. 2023, arXiv:2305.14314): LoRA adapters trained over a frozen NF4
(double-quantized) base, through bitsandbytes (the base) and peft (the adapter).

Published: the peft adapter (loadable with `PeftModel.from_pretrained` over the base loaded in NF4
with the same BitsAndBytesConfig), and, when the recipe sets `finetune.merge`, the adapter merged
into the 16-bit base under merged/.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from factory.engines.loading import checkpoint_dtype, compute_dtype, nf4_config
from factory.engines.lora.train import save_merged
from factory.methods.base import CardFacts
from factory.methods.lora_base import LoRAMethod

if TYPE_CHECKING:
    from factory.recipe import Settings


class QLoRA(LoRAMethod):
    name = "qlora"
    paper_name = "QLoRA"
    summary = "LoRA fine-tuning over an NF4 base (bitsandbytes + peft + transformers Trainer)"
    output_format = "peft-adapter"
    artifact_kind = "adapter"

    base_quantization = "nf4"
    # how the adapter is attached and saved
    engine_modules = LoRAMethod.engine_modules + ("factory.methods.qlora:QLoRA.attach",
                                                "factory.methods.qlora:QLoRA.save")
    figures = {"engine": "transformers Trainer + peft"}

    def attach(self, base_dir: Path, ft) -> tuple:
        """The base loaded in NF4 (double-quantized), prepared for k-bit training, a peft LoRA adapter on it."""
        import torch
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, set_seed

        dtype = torch.float32 if compute_dtype() == "float32" else torch.bfloat16
        lora = ft.lora
        model = AutoModelForCausalLM.from_pretrained(
            base_dir, dtype=dtype, quantization_config=nf4_config(dtype, ["lm_head"], double_quant=True),
            device_map="auto" if torch.cuda.is_available() else None)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=ft.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": True})
        set_seed(ft.seed)
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=list(lora.target_modules), bias="none",
                                                 task_type="CAUSAL_LM"))
        return model, dtype

    def save(self, model, tokenizer, base_dir: Path, out: Path, ft, log) -> None:
        """The adapter alone; with `finetune.merge`, also merged into the 16-bit base under merged/."""
        model.save_pretrained(out)
        (out / "README.md").unlink(missing_ok=True)  # peft's stub card; the card stage writes the real one
        tokenizer.save_pretrained(out)
        if ft.merge:
            save_merged(base_dir, out, out / "merged", checkpoint_dtype(base_dir), tokenizer)

    def card_facts(self, settings: "Settings") -> CardFacts:
        merged = settings.finetune is not None and settings.finetune.merge
        return CardFacts(
            engine="peft LoRA over a bitsandbytes NF4 base, trained with transformers' Trainer",
            format="peft LoRA adapter (adapter_config.json, adapter_model.safetensors)"
                   + ("; merged/: the adapter merged into the 16-bit base" if merged else ""),
            tags=("peft", "lora", "qlora", "bitsandbytes", "nf4"),
            library_name="peft",  # the Hub's library filter: an adapter is loaded with peft
            load_note="Load the base model in NF4 (bitsandbytes, double quantization) and the adapter with "
                      "`PeftModel.from_pretrained(base, repo)`.",
            serve_note="",
            headline=f"{settings.method.upper()} ({settings.scheme_label}) LoRA fine-tuning adapter over a 4-bit NF4 "
                     "quantization",
            training_part="parts/fine-tuning.md.j2", base_model_relation="adapter")
