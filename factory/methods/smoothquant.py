"""SmoothQuant (Xiao et al. 2023) W8A8: activation outliers migrated into the weights, then RTN."""

from __future__ import annotations

from pydantic import Field

from factory.methods.base import PER_CHANNEL
from factory.methods.llmcompressor_base import LLMCompressorMethod
from factory.recipe import Strict


class SmoothQuantOptions(Strict):
    strength: float = Field(0.8, gt=0, lt=1, description="Migration strength alpha.")


class SmoothQuant(LLMCompressorMethod):
    name = "smoothquant"
    paper_name = "SmoothQuant"
    summary = "W8A8: activation outliers migrated into the weights"
    needs_calibration = True
    supported_bits = (8,)
    default_group_size = PER_CHANNEL
    fixed_group_size = (PER_CHANNEL, "smoothquant W8A8 uses per-channel weights")
    activations = "required"
    Options = SmoothQuantOptions

    def checks_group_divisibility(self) -> bool:
        return False

    def modifiers(self, settings, quant):
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        # As published: migrate activation outliers into the weights, then round-to-nearest W8A8
        # (per-channel weights, dynamic per-token activations).
        return [SmoothQuantModifier(smoothing_strength=self.options(settings).strength), QuantizationModifier(**quant)]
