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

from typing import TYPE_CHECKING

from factory.methods.base import CardFacts
from factory.methods.lora_base import LoRAMethod

if TYPE_CHECKING:
    from factory.recipe import Settings

class IRQLoRA(LoRAMethod):
    name = "ir-qlora"
    paper_name = "IR-QLoRA"
    summary = "ICQ-calibrated NF4 base + elastic LoRA (our code), published merged (simulated 4-bit)"
    output_format = "simulated"
    artifact_kind = "checkpoint"
    libraries = ("accelerate",)

    engine_modules = LoRAMethod.engine_modules + ("factory.engines.lora.icq", "factory.engines.lora.iec")  # ICQ and IEC are ours

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
            serve_note="")
