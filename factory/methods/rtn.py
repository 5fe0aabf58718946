"""RTN: round-to-nearest, data-free (llm-compressor's QuantizationModifier, or its model_free_ptq)."""

from __future__ import annotations

from pydantic import Field

from factory.methods.llmcompressor_base import LLMCompressorMethod
from factory.recipe import Strict


class RTNOptions(Strict):
    model_free: bool = Field(
        False, description="Build through llm-compressor's model_free_ptq: safetensors shard by shard without "
        "loading the model (a 70B build in about one shard of memory); the same rounding as oneshot.")


class RTN(LLMCompressorMethod):
    name = "rtn"
    paper_name = "RTN"
    summary = "round-to-nearest per group, no calibration"
    supported_bits = (2, 3, 4, 8)
    activations = "optional"  # W8A8 with dynamic per-token activations
    Options = RTNOptions

    def modifiers(self, settings, quant):
        from llmcompressor.modifiers.quantization import QuantizationModifier

        return [QuantizationModifier(**quant)]

    def quantize(self, base_dir, settings, out_dir, recipe_dir):
        if (settings.options or {}).get("model_free"):
            return self.quantize_model_free(base_dir, settings, out_dir)
        return super().quantize(base_dir, settings, out_dir, recipe_dir)
