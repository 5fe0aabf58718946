"""QuIP-style (Hadamard incoherence + GPTQ), through llm-compressor.

QuIP (Chee et al. 2023) makes weights and Hessians incoherent with random orthogonal rotations,
then rounds with LDLQ, which is GPTQ. llm-compressor's QuIPModifier keeps its rotations as online
weights (`v_input`, `u_output`) that transformers 5.17 drops on load, so a reloaded model computes
wrong logits. SpinQuantModifier's R1/R2 rotations are folded into the weights offline (norms
folded first), so the checkpoint is a plain compressed-tensors model that any loader reads: random
Hadamard R1 (residual stream) and R2 (attention values/outputs), then GPTQ per channel as the
paper ran QuIP. No E8 lattice codebook (that is QuIP#), hence "QuIP-style".
"""

from __future__ import annotations

from pydantic import Field

from factory.methods.base import PER_CHANNEL
from factory.methods.llmcompressor_base import LLMCompressorMethod
from factory.recipe import Strict


class QuIPOptions(Strict):
    dampening_frac: float = Field(0.01, gt=0, lt=1, description="Hessian dampening of the GPTQ (LDLQ) step.")
    transform_type: str = Field("random-hadamard", pattern="^(hadamard|random-hadamard)$",
                                description="Rotation: random-hadamard (QuIP's randomized incoherence) or hadamard.")


class QuIP(LLMCompressorMethod):
    name = "quip"
    paper_name = "QuIP"
    summary = "QuIP-style: Hadamard incoherence rotations folded into the weights, then GPTQ (LDLQ) per channel"
    needs_calibration = True
    supported_bits = (2, 3, 4)
    default_group_size = PER_CHANNEL  # per-channel, as the paper ran QuIP
    supported_kinds = ("causal-lm",)
    # measured with llm-compressor 0.14.0.1 on a tiny LLaVA-Next: "Cannot determine head_dim from config"
    unsupported_kind_reason = ("llm-compressor 0.14 reads head_dim from the top-level config, which "
                               "LLaVA-Next keeps in text_config")
    Options = QuIPOptions

    def modifiers(self, settings, quant):
        from llmcompressor.modifiers.quantization import GPTQModifier
        from llmcompressor.modifiers.transform.spinquant import SpinQuantModifier

        o = self.options(settings)
        return [SpinQuantModifier(rotations=["R1", "R2"], transform_type=o.transform_type),
                GPTQModifier(**quant, dampening_frac=o.dampening_frac)]

    def card_facts(self, settings):
        facts = super().card_facts(settings)
        from dataclasses import replace

        return replace(facts, engine="llm-compressor `oneshot`: QuIP-style (Hadamard incoherence + GPTQ), "
                                     "SpinQuant R1/R2 rotations folded into the weights", tags=(*facts.tags, "quip"))
