"""MXFP4 (OCP microscaling): FP4 E2M1 weights and activations in groups of 32 with a power-of-two (E8M0)
scale each. Data-free: the activation scales are taken at run time (compressed-tensors preset MXFP4)."""

from __future__ import annotations

from factory.methods.preset_base import FP4_SERVING, PresetFormat


class MXFP4(PresetFormat):
    name = "mxfp4"
    summary = "MXFP4 W4A4: FP4 weights and activations, groups of 32, power-of-two scales; data-free"
    scheme = "W4A4-MXFP4"
    preset = "MXFP4"
    supported_bits = (4,)
    default_group_size = 32
    fixed_group_size = (32, "mxfp4's groups are 32 weights")
    input_group = 32
    weights_format = "FP4 E2M1, groups of 32 with E8M0 (power-of-two) scales"
    activations_format = "FP4 E2M1, dynamic groups of 32 with E8M0 scales"
    serving = FP4_SERVING
