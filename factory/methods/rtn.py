"""RTN: round-to-nearest, data-free (llm-compressor's QuantizationModifier)."""

from __future__ import annotations

from factory.methods.llmcompressor_base import LLMCompressorMethod


class RTN(LLMCompressorMethod):
    name = "rtn"
    paper_name = "RTN"
    summary = "round-to-nearest per group, no calibration"
    supported_bits = (2, 3, 4, 8)
    activations = "optional"  # W8A8 with dynamic per-token activations

    def modifiers(self, settings, quant):
        from llmcompressor.modifiers.quantization import QuantizationModifier

        return [QuantizationModifier(**quant)]
