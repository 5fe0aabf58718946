"""QLoRA (Dettmers et al. 2023, arXiv:2305.14314): LoRA adapters trained over a frozen NF4
(double-quantized) base, through bitsandbytes (the base) and peft (the adapter).

Published: the peft adapter (loadable with `PeftModel.from_pretrained` over the base loaded in NF4
with the same BitsAndBytesConfig), and, when the recipe sets `finetune.merge`, the adapter merged
into the 16-bit base under merged/.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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

    def bnb_config(self, compute_dtype, ignore: tuple[str, ...] = ("lm_head",)):
        """The NF4 base: the nf4 method's BitsAndBytesConfig, with QLoRA's double quantization."""
        from factory.methods.nf4 import NF4

        config = NF4().config_for(compute_dtype, ignore=list(ignore))
        config.bnb_4bit_use_double_quant = True
        return config

    def card_facts(self, settings: "Settings") -> CardFacts:
        merged = settings.finetune is not None and settings.finetune.merge
        return CardFacts(
            engine="peft LoRA over a bitsandbytes NF4 base, trained with transformers' Trainer",
            format="peft LoRA adapter (adapter_config.json, adapter_model.safetensors)"
                   + ("; merged/: the adapter merged into the 16-bit base" if merged else ""),
            tags=("peft", "lora", "qlora", "bitsandbytes", "nf4"),
            load_note="Load the base model in NF4 (bitsandbytes, double quantization) and the adapter with "
                      "`PeftModel.from_pretrained(base, repo)`.",
            serve_note="")
