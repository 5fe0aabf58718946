"""SliM-LLM (Huang et al. 2024): salience-driven mixed precision per group of 128 columns
(bits-1, bits, bits+1, averaging exactly `bits`) with GPTQ. Simulated output
(factory/engines/lowbit/slim_llm.py)."""

from __future__ import annotations

from functools import partial

from pydantic import Field

from factory.methods.simulated_base import SimulatedMethod
from factory.recipe import Strict


class SliMLLMOptions(Strict):
    salient_error_weight: float = Field(2.0, gt=0, description="Weight of salient weights in the scale search.")
    dampening_frac: float = Field(0.01, gt=0, lt=1, description="Hessian dampening.")


class SliMLLM(SimulatedMethod):
    name = "slim-llm"
    paper_name = "SliM-LLM"
    summary = "salience-driven mixed precision per group (bits-1/bits/bits+1) with GPTQ (simulated)"
    # each group takes bits-1, bits or bits+1 within 1..8, so an average of 2 to 7 is reachable
    supported_bits = (2, 3, 4, 5, 6, 7)
    Options = SliMLLMOptions
    engine_modules = SimulatedMethod.engine_modules + ("factory.engines.lowbit.slim_llm",)

    def check(self, recipe):
        out = [p for p in super().check(recipe) if p[0] != ("weights", "bits")]
        bits = recipe.weights.bits
        if bits not in self.supported_bits:
            out.append((("weights", "bits"), f"slim-llm averages groups of {bits - 1}, {bits} and {bits + 1} bits, "
                                             f"which 1-8 bit groups cannot reach; use 2 to 7"))
        return out

    def scheme_label(self, settings) -> str:
        return f"W{settings.bits}A16-g128-mixed-simulated"

    def weight_quantizer(self, settings):
        from factory.engines.lowbit import slim_llm  # loads torch; methods import without it

        o = self.options(settings)
        return partial(slim_llm.quantize_weight, target_bits=settings.bits, group_size=128,
                       salient_error_weight=o.salient_error_weight, dampening_frac=o.dampening_frac)
