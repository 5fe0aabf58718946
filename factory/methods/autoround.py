"""AutoRound (Cheng et al. 2024): sign-gradient tuning of rounding and clipping per decoder block,
through llm-compressor's AutoRoundModifier (auto-round). Beyond the paper's grid: today's strongest
low-bit post-training method in this ecosystem. The model is tuned in bf16 (float32 crashes in
auto-round 0.15 with a dtype mismatch)."""

from __future__ import annotations

from pydantic import Field

from factory.methods.llmcompressor_base import LLMCompressorMethod
from factory.recipe import Strict


class AutoRoundOptions(Strict):
    iters: int = Field(200, ge=1, le=10000, description="Tuning steps per decoder block (auto-round's default: 200).")


class AutoRound(LLMCompressorMethod):
    name = "autoround"
    summary = "sign-gradient tuning of rounding and clipping per block (auto-round), beyond the paper"
    needs_calibration = True
    supported_bits = (2, 3, 4)
    libraries = ("llmcompressor", "compressed-tensors", "auto-round")
    supported_kinds = ("causal-lm",)
    # measured with llm-compressor 0.14.0.1 on a tiny LLaVA-Next: "Cannot determine head_dim from config"
    unsupported_kind_reason = ("llm-compressor 0.14 reads head_dim from the top-level config, which "
                               "LLaVA-Next keeps in text_config")
    Options = AutoRoundOptions
    load_dtype = "bfloat16"

    def modifiers(self, settings, quant):
        from llmcompressor.modifiers.autoround import AutoRoundModifier

        return [AutoRoundModifier(**quant, iters=self.options(settings).iters, enable_torch_compile=False)]
