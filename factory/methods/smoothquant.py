"""SmoothQuant (Xiao et al. 2023): activation outliers migrated into the weights, then round-to-nearest
weights per channel and dynamic per-token activations at the same width: W8A8, W6A6 or W4A4.

W8A8 is what vLLM serves (its int8 kernels). W6A6 and W4A4, the paper's lower rows (Huang et al. 2024,
Table 1), are evaluation builds: compressed-tensors checkpoints whose config keeps the activation
scheme, so transformers (compressed-tensors) fake-quantizes every linear's input per token when it
loads them, as it does when the factory scores them; vLLM has no int6/int4-activation kernel.
"""

from __future__ import annotations

from pydantic import Field

from factory.methods.base import PER_CHANNEL
from factory.methods.llmcompressor_base import LLMCompressorMethod
from factory.recipe import Strict

SERVED_BITS = 8  # vLLM's compressed-tensors W8A8 int kernels; nothing below


class SmoothQuantOptions(Strict):
    strength: float = Field(0.8, gt=0, lt=1, description="Migration strength alpha.")


class SmoothQuant(LLMCompressorMethod):
    name = "smoothquant"
    paper_name = "SmoothQuant"
    summary = "W8A8 (served), W6A6, W4A4 (evaluation): activation outliers migrated into the weights"
    needs_calibration = True
    supported_bits = (4, 6, 8)
    activation_bits = (4, 6, 8)
    default_group_size = PER_CHANNEL
    fixed_group_size = (PER_CHANNEL, "smoothquant uses per-channel weights")
    activations = "required"
    Options = SmoothQuantOptions

    def check(self, recipe):
        out = super().check(recipe)
        if recipe.evaluation.backend == "vllm" and recipe.weights.bits != SERVED_BITS:
            out.append((("evaluation", "backend"), f"vLLM serves smoothquant W{SERVED_BITS}A{SERVED_BITS} only; score "
                                                   f"W{recipe.weights.bits}A{recipe.weights.bits} with backend: hf"))
        return out

    def checks_group_divisibility(self) -> bool:
        return False

    def modifiers(self, settings, quant):
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        # As published: migrate activation outliers into the weights, then round-to-nearest
        # (per-channel weights, dynamic per-token activations, both at the recipe's width).
        return [SmoothQuantModifier(smoothing_strength=self.options(settings).strength), QuantizationModifier(**quant)]

    def card_facts(self, settings):
        from dataclasses import replace

        facts = super().card_facts(settings)
        if settings.bits == SERVED_BITS:
            return facts
        bits = settings.bits
        return replace(facts, serve_note=(
            f"Evaluation only: vLLM serves SmoothQuant W8A8, and has no kernel for int{bits} activations. "
            f"Loaded in transformers (with `compressed-tensors`), every linear's input is quantized to {bits} "
            f"bits per token on the fly (fake quantization, as this build was scored): the quality of "
            f"W{bits}A{bits}, without its speed or memory saving."))
