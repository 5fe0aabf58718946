"""IR-QLoRA (Qin et al. 2024, "Accurate LoRA-Finetuning Quantization of LLMs via Information Retention",
ICML 2024, arXiv:2402.05445), written from the paper: the base is quantized with Information
Calibration Quantization (factory.engines.lora.icq: NF4 with a per-block entropy-maximising shift) and
the adapter is LoRA with Information Elastic Connections (factory.engines.lora.iec).

Neither bitsandbytes nor peft has ICQ's per-block shift or IEC's connections, so what is published
is what plain transformers loads exactly: the adapter merged into the ICQ-dequantized base
(W_eff = dequant_ICQ(W) + s (B + beta2 R)(A + beta1 G), exact, iec.py), a dense checkpoint at full
size. It carries the quality of the method, not its 4-bit memory saving (simulated quantization).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from factory.engines.loading import checkpoint_dtype, compute_dtype
from factory.methods.base import CardFacts, simulated_note
from factory.methods.lora_base import LoRAMethod

if TYPE_CHECKING:
    from factory.recipe import Settings

class IRQLoRA(LoRAMethod):
    name = "ir-qlora"
    paper_name = "IR-QLoRA"
    summary = "ICQ-calibrated NF4 base + elastic LoRA (our code), published merged (simulated 4-bit)"
    output_format = "simulated"
    simulated = True
    artifact_kind = "checkpoint"
    libraries = ("accelerate",)

    engine_modules = LoRAMethod.engine_modules + ("factory.methods.ir_qlora:IRQLoRA.attach",
                                                "factory.methods.ir_qlora:IRQLoRA.save",
                                                "factory.engines.lora.icq", "factory.engines.lora.iec")  # ours

    figures = {"engine": "transformers Trainer + factory IR-QLoRA"}

    def console_note(self) -> str | None:
        return simulated_note(self.name)

    def attach(self, base_dir: Path, ft) -> tuple:
        """The targeted weights replaced by their ICQ-dequantized values and wrapped in elastic LoRA."""
        import torch
        from transformers import AutoModelForCausalLM, set_seed

        from factory.engines.lora.iec import apply_elastic_lora  # loads torch; methods import without it

        dtype = torch.float32 if compute_dtype() == "float32" else torch.bfloat16
        lora = ft.lora
        model = AutoModelForCausalLM.from_pretrained(
            base_dir, dtype=dtype, device_map="auto" if torch.cuda.is_available() else None)
        set_seed(ft.seed)
        apply_elastic_lora(model, lora.target_modules, r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                           quantize_base=True)
        if ft.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            model.enable_input_require_grads()
        return model, dtype

    def save(self, model, tokenizer, base_dir: Path, out: Path, ft, log) -> None:
        """The elastic LoRA merged exactly into the ICQ-dequantized base, a plain checkpoint in the base's dtype."""
        from factory.engines.lora.iec import merge_elastic_lora  # loads torch; methods import without it

        model.eval()
        merged = merge_elastic_lora(model)
        if ft.gradient_checkpointing:
            model.gradient_checkpointing_disable()
        model.config.use_cache = True
        model.to(checkpoint_dtype(base_dir)).save_pretrained(out)
        tokenizer.save_pretrained(out)
        log(f"  finetune: merged {merged} elastic LoRA layers into the ICQ-dequantized base")

    def card_facts(self, settings: "Settings") -> CardFacts:
        return CardFacts(
            engine="the factory's IR-QLoRA (ICQ base + IEC LoRA, factory/engines/lora/icq.py, iec.py), "
                   "trained with transformers' Trainer",
            format="a dense checkpoint: the elastic LoRA adapter merged exactly into the ICQ-dequantized base "
                   "(simulated 4-bit: full size, no memory saving)",
            tags=("lora", "ir-qlora", "simulated-quantization"),
            load_note="Loads with plain transformers (`AutoModelForCausalLM.from_pretrained`). What it loses: the "
                      "4-bit storage (the ICQ codes, shifts and the separate adapter are not kept; the weights are "
                      "their dequantized, merged values in the checkpoint's dtype, so rounding to that dtype is "
                      "the only change from the trained model).",
            serve_note="",
            headline=f"{settings.method.upper()} ({settings.scheme_label}) LoRA fine-tuning over a 4-bit NF4 "
                     "quantization",
            notice_part="parts/notice-merged-lora.md.j2", training_part="parts/fine-tuning.md.j2",
            base_model_relation="finetune")
