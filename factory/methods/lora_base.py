"""LoRA fine-tuning methods (QLoRA, IR-QLoRA): their artifact is made by the finetune stage
(factory/stages/finetune.py), not by quantization alone.

The recipe's `finetune:` block (factory.recipe.FineTune) holds the training settings; the method
says how the 4-bit base is made, how the adapter is attached and what is published.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from factory.methods.base import CardFacts, Problem, QuantMethod

if TYPE_CHECKING:
    from factory.recipe import Recipe, Settings


class LoRAMethod(QuantMethod):
    stage = "finetune"
    supported_bits = (4,)
    default_group_size = 64
    fixed_group_size = (64, "NF4 uses a fixed block size of 64")
    default_symmetric = None
    libraries = ("peft", "bitsandbytes", "accelerate")
    supported_kinds = ("causal-lm",)
    unsupported_kind_reason = "the fine-tuning stage trains causal LMs on Alpaca text (the paper's LoRA-FT track)"

    def check(self, recipe: "Recipe") -> list[Problem]:
        out = [p for p in super().check(recipe) if p[0] != ("weights", "bits")]
        if recipe.weights.bits != 4:
            out.append((("weights", "bits"), f"{self.name} fine-tunes a 4-bit (NF4) base, not a {recipe.weights.bits}-bit one"))
        return out

    # The stage's own code (prompt template, loss mask, training setup) shapes the adapter.
    engine_modules: tuple[str, ...] = ("factory.stages.finetune", "factory.engines.lora.data")

    def quantize(self, base_dir: Path, settings: "Settings", out_dir: Path, recipe_dir: Path) -> dict:
        raise NotImplementedError(f"{self.name} builds with the finetune stage (factory finetune)")

    def scheme_label(self, settings: "Settings") -> str:
        ft = settings.finetune
        return f"NF4-LoRA-r{ft.lora.r}" if ft is not None else "NF4-LoRA"

    def train(self, base_dir: Path, settings: "Settings", records: list[dict], out_dir: Path, work_dir: Path,
              log=print) -> dict:
        from factory.stages.finetune import train

        return train(self, base_dir, settings, records, out_dir, work_dir, log)
