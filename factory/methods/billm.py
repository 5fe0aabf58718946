"""BiLLM (Huang et al. 2024): residual binarization of salient columns, a bell-shaped split of the
rest into two binarized groups, block-wise error compensation; about 1.1 bits per weight by the
paper's count. Simulated output (factory/engines/lowbit/billm.py)."""

from __future__ import annotations

from functools import partial

from pydantic import Field

from factory.methods.simulated_base import SimulatedMethod
from factory.recipe import Strict


class BiLLMOptions(Strict):
    max_salient_columns: int = Field(30, ge=1, le=128, description="Most salient columns searched per 128-column block.")
    dampening_frac: float = Field(0.01, gt=0, lt=1, description="Hessian dampening.")


class BiLLM(SimulatedMethod):
    name = "billm"
    paper_name = "BiLLM"
    summary = "residual binarization of salient columns, split binarization of the rest, ~1.1 bits (simulated)"
    supported_bits = (1,)
    Options = BiLLMOptions
    engine_modules = SimulatedMethod.engine_modules + ("factory.engines.lowbit.billm",)

    def scheme_label(self, settings) -> str:
        return "W1.1A16-g128-simulated"

    def paper_bits_label(self, settings) -> str:
        return "1.1"

    def weight_quantizer(self, settings):
        from factory.engines.lowbit import billm  # loads torch; methods import without it

        o = self.options(settings)
        return partial(billm.quantize_weight, block_size=128, max_salient_columns=o.max_salient_columns,
                       dampening_frac=o.dampening_frac)
