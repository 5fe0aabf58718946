"""SpinQuant rotations + GPTQ, through llm-compressor: a deployable packed build, not the paper's QuIP.

SpinQuant-style R1/R2 random Hadamard rotations folded into the weights, then GPTQ with the usual
per-channel (or per-group) symmetric integer grid. It is not QuIP (Chee et al. 2023; the `quip`
method, factory/engines/lowbit/quip.py): QuIP rotates both sides of every linear (down_proj's input
included), rescales diagonally first and rounds on one per-matrix grid of 2^b levels with no zero;
here down_proj's input is never rotated and the grid is the abs-max one, where at 2 bits most
rotated (near-Gaussian) weights round to zero. Its virtue is the file: packed compressed-tensors
that transformers and vLLM load. llm-compressor's QuIPModifier keeps its rotations as online
weights (`v_input`, `u_output`) that transformers 5.17 drops on load, so a reloaded model computes
wrong logits. SpinQuantModifier's R1/R2 rotations are folded into the weights offline (norms
folded first), so the checkpoint is a plain compressed-tensors model that any loader reads: random
Hadamard R1 (residual stream) and R2 (attention values/outputs), then GPTQ (per channel by default).
"""

from __future__ import annotations

from pydantic import Field

from factory.methods.base import PER_CHANNEL
from factory.methods.llmcompressor_base import LLMCompressorMethod
from factory.recipe import Strict


class SpinQuantGPTQOptions(Strict):
    dampening_frac: float = Field(0.01, gt=0, lt=1, description="Hessian dampening of the GPTQ step.")
    transform_type: str = Field("random-hadamard", pattern="^(hadamard|random-hadamard)$",
                                description="Rotation: random-hadamard or hadamard.")


class SpinQuantGPTQ(LLMCompressorMethod):
    name = "spinquant-gptq"
    paper_name = None  # not in Huang et al. 2024's tables (their QuIP is the `quip` method)
    summary = "SpinQuant R1/R2 Hadamard rotations folded into the weights, then GPTQ per channel (packed; not QuIP)"
    needs_calibration = True
    supported_bits = (2, 3, 4)
    default_group_size = PER_CHANNEL
    supported_kinds = ("causal-lm",)
    # measured with llm-compressor 0.14.0.1 on a tiny LLaVA-Next: "Cannot determine head_dim from config"
    unsupported_kind_reason = ("llm-compressor 0.14 reads head_dim from the top-level config, which "
                               "LLaVA-Next keeps in text_config")
    Options = SpinQuantGPTQOptions

    def modifiers(self, settings, quant):
        from llmcompressor.modifiers.quantization import GPTQModifier
        from llmcompressor.modifiers.transform.spinquant import SpinQuantModifier

        o = self.options(settings)
        return [SpinQuantModifier(rotations=["R1", "R2"], transform_type=o.transform_type),
                GPTQModifier(**quant, dampening_frac=o.dampening_frac)]

    def card_facts(self, settings):
        facts = super().card_facts(settings)
        from dataclasses import replace

        return replace(facts, engine="llm-compressor `oneshot`: SpinQuant R1/R2 Hadamard rotations folded into "
                                     "the weights, then GPTQ (not the paper's QuIP)",
                       tags=(*facts.tags, "spinquant", "gptq"))
