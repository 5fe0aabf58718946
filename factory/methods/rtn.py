"""RTN: round-to-nearest, data-free: llm-compressor's model_free_ptq by default (the model is never built),
its oneshot QuantizationModifier with `rtn: {model_free: false}`."""

from __future__ import annotations

from dataclasses import replace

from pydantic import Field

from factory.methods.llmcompressor_base import LLMCompressorMethod
from factory.recipe import Strict


class RTNOptions(Strict):
    model_free: bool = Field(
        True, description="Build through llm-compressor's model_free_ptq (the default): safetensors shard by shard "
        "without loading the model (a 70B build in about one shard of memory), the same rounding as oneshot; "
        "false: load the model and run llm-compressor's oneshot.")


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

    def runs_model_free(self, settings) -> bool:
        return bool((settings.options or {}).get("model_free"))

    def quantize(self, base_dir, settings, out_dir, recipe_dir):
        if self.runs_model_free(settings):
            return self.quantize_model_free(base_dir, settings, out_dir)
        return super().quantize(base_dir, settings, out_dir, recipe_dir)

    def card_facts(self, settings):
        facts = super().card_facts(settings)
        if self.runs_model_free(settings):
            return replace(facts, engine="llm-compressor `model_free_ptq` (shard by shard, no model built)")
        return facts
