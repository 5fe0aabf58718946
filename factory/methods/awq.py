"""AWQ (Lin et al. 2024): activation-aware scaling, then round-to-nearest, through llm-compressor."""

from __future__ import annotations

from factory.methods.llmcompressor_base import LLMCompressorMethod


class AWQ(LLMCompressorMethod):
    name = "awq"
    paper_name = "AWQ"
    summary = "activation-aware weight scaling, then round-to-nearest"
    needs_calibration = True
    supported_bits = (2, 3, 4, 8)
    default_symmetric = False  # asymmetric, as in AWQ's reference code

    def modifiers(self, settings, quant):
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(), QuantizationModifier(**quant)]
