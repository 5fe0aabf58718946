"""MXFP4A16: MXFP4 weights (FP4 E2M1, groups of 32, E8M0 scales), 16-bit activations. Data-free
(compressed-tensors preset MXFP4A16)."""

from __future__ import annotations

from factory.methods.preset_base import FP4_SERVING, PresetFormat


class MXFP4A16(PresetFormat):
    name = "mxfp4a16"
    summary = "MXFP4 weights only: FP4, groups of 32, power-of-two scales; data-free"
    scheme = "W4A16-MXFP4"
    preset = "MXFP4A16"
    supported_bits = (4,)
    default_group_size = 32
    fixed_group_size = (32, "mxfp4a16's groups are 32 weights")
    input_group = 32
    weights_format = "FP4 E2M1, groups of 32 with E8M0 (power-of-two) scales"
    serving = FP4_SERVING
