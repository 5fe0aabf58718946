"""QuIP (Chee et al. 2023): diagonal rescale, seeded two-sided incoherence rotations, one
per-matrix grid of 2^b levels with no zero, LDLQ (= GPTQ) rounding, then un-rotation. Simulated
output (factory/engines/lowbit/quip.py): the un-rotated dequantized weights at full size, as the paper
evaluates QuIP. The packed rotation+GPTQ build that transformers and vLLM load is `spinquant-gptq`.
"""

from __future__ import annotations

from pydantic import Field

from factory.methods.base import PER_CHANNEL
from factory.methods.simulated_base import SimulatedMethod
from factory.recipe import MAX_SEED, Strict


class QuIPOptions(Strict):
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the per-linear seeds that draw U and V "
                      "(each linear's own seed is recorded in the manifest).")
    dampening_frac: float = Field(0.01, gt=0, lt=1, description="Dampening of the LDLQ (GPTQ) step, on the "
                                  "normalized Hessian.")


class QuIP(SimulatedMethod):
    name = "quip"
    paper_name = "QuIP"
    summary = ("incoherence processing (diagonal rescale, two-sided random orthogonal rotations) + LDLQ on "
               "a per-matrix grid (simulated)")
    supported_bits = (2, 3, 4)
    default_group_size = PER_CHANNEL
    fixed_group_size = (PER_CHANNEL, "quip has no groups: one scale per weight matrix (2.4 x RMS after the "
                                     "rotations); remove group_size or write per-channel")
    Options = QuIPOptions
    engine_modules = SimulatedMethod.engine_modules + ("factory.engines.lowbit.quip",)

    def scheme_label(self, settings) -> str:
        return f"W{settings.bits}A16-simulated"

    def weight_quantizer(self, settings):
        from factory.engines.lowbit.quip import SeededQuantizer  # loads torch; methods import without it

        o = self.options(settings)
        return SeededQuantizer(o.seed, bits=settings.bits, dampening_frac=o.dampening_frac, block_size=128)

    def manifest_figures(self, linears) -> dict:
        return {"incoherence_seeds": {linear.name: linear.stats["seed"] for linear in linears},
                "incoherence_transforms": sorted({f"{linear.stats['u_transform']}/{linear.stats['v_transform']}"
                                                 for linear in linears})}

    def card_facts(self, settings):
        from dataclasses import replace

        facts = super().card_facts(settings)
        return replace(facts, tags=(*facts.tags, "quip"),
                       load_note=facts.load_note + " The incoherence rotations are undone before saving: the "
                       "weights are those of the base's basis, each on its own rotated 2^b-level grid "
                       "(per-linear seeds in the manifest).")
