"""GPTQ (Frantar et al. 2023): Hessian-based error compensation, through llm-compressor's GPTQModifier."""

from __future__ import annotations

from pydantic import Field

from factory.methods.llmcompressor_base import LLMCompressorMethod
from factory.recipe import Strict


class GPTQOptions(Strict):
    dampening_frac: float = Field(0.01, gt=0, lt=1, description="Hessian dampening (the paper's script: 0.01).")


class GPTQ(LLMCompressorMethod):
    name = "gptq"
    paper_name = "GPTQ"
    summary = "second-order (Hessian) rounding with error compensation"
    needs_calibration = True
    supported_bits = (2, 3, 4, 8)
    activations = "optional"
    Options = GPTQOptions

    def modifiers(self, settings, quant):
        from llmcompressor.modifiers.quantization import GPTQModifier

        return [GPTQModifier(**quant, dampening_frac=self.options(settings).dampening_frac)]
