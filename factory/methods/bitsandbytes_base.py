"""Methods bitsandbytes applies while transformers loads the weights (NF4, LLM.int8).

The saved checkpoint holds the packed weights and a `quantization_config` that transformers
reads back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from factory.engines.loading import load_preprocessor, model_class, peak_gpu_mb, reset_gpu_peak
from factory.methods.base import CardFacts, QuantMethod

if TYPE_CHECKING:
    from factory.recipe import Settings


class BitsAndBytesMethod(QuantMethod):
    output_format = "bitsandbytes"
    libraries = ("bitsandbytes",)
    default_symmetric = None

    def config(self, settings: "Settings"):
        """transformers' BitsAndBytesConfig for this method."""
        raise NotImplementedError

    def scheme_label(self, settings: "Settings") -> str:
        return self.name.upper()

    def quantize(self, base_dir: Path, settings: "Settings", out_dir: Path, recipe_dir: Path) -> dict:
        import torch

        reset_gpu_peak()
        model = model_class(settings.kind).from_pretrained(
            base_dir, dtype=torch.bfloat16, quantization_config=self.config(settings),
            device_map="auto" if torch.cuda.is_available() else None,
        )
        model.save_pretrained(out_dir)
        load_preprocessor(settings.kind, base_dir).save_pretrained(out_dir)
        return {"engine": "bitsandbytes", "format": self.output_format, "peak_gpu_mb": peak_gpu_mb(),
                "device": "cuda" if torch.cuda.is_available() else "cpu"}

    def card_facts(self, settings: "Settings") -> CardFacts:
        return CardFacts(engine="bitsandbytes through transformers", format="bitsandbytes",
                         tags=("bitsandbytes",), load_note="Loading needs `bitsandbytes` and a CUDA GPU.",
                         serve_note="")
