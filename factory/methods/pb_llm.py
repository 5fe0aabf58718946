"""PB-LLM (Shang et al. 2023): partial binarization with GPTQ-style error compensation (PB-GPTQ).

A salient fraction of the weights (by Hessian salience) stays at `salient_bits`, the rest is
binarized; average bits = 1 + fraction x (salient_bits - 1): 0.1 -> the paper's 1.7-bit row,
1/7 -> its 2-bit row. Simulated output (factory/engines/lowbit/pbllm.py).
"""

from __future__ import annotations

from functools import partial

from pydantic import Field

from factory.methods.simulated_base import SimulatedMethod
from factory.recipe import Strict


class PBLLMOptions(Strict):
    salient_fraction: float = Field(0.1, description="Share of weights kept at salient_bits, in (0, 0.5] "
                                    "(0.1: the paper's 1.7-bit row; 0.142857: its 2-bit row).")
    salient_bits: int = Field(8, ge=2, le=8, description="Bits of the salient weights.")
    dampening_frac: float = Field(0.01, gt=0, lt=1, description="Hessian dampening.")


class PBLLM(SimulatedMethod):
    name = "pb-llm"
    paper_name = "PB-LLM"
    summary = "partial binarization: salient weights kept at 8 bits, the rest binarized (simulated)"
    # `bits: 2` is the container class (at most 2 bits per weight on average, by the paper's count);
    # the average itself follows salient_fraction
    supported_bits = (2,)
    Options = PBLLMOptions
    engine_modules = SimulatedMethod.engine_modules + ("factory.engines.lowbit.pbllm",)

    def check(self, recipe):
        out = super().check(recipe)
        fraction = recipe.method_options.salient_fraction
        if not 0 < fraction <= 0.5:
            out.append((("pb-llm", "salient_fraction"), f"must be in (0, 0.5], not {fraction}"))
        return out

    def paper_bits(self, settings) -> float:
        o = self.options(settings)
        return 1 + o.salient_fraction * (o.salient_bits - 1)

    def scheme_label(self, settings) -> str:
        return f"W{self.paper_bits(settings):.1f}A16-g128-simulated"

    def paper_bits_label(self, settings) -> str:
        return f"{round(self.paper_bits(settings), 1):g}"

    def weight_quantizer(self, settings):
        from factory.engines.lowbit import pbllm  # loads torch; methods import without it

        o = self.options(settings)
        return partial(pbllm.quantize_weight, salient_fraction=o.salient_fraction, salient_bits=o.salient_bits,
                       block_size=128, dampening_frac=o.dampening_frac)
