"""NVFP4A16: NVFP4 weights (FP4 E2M1, groups of 16, FP8 scales, a global scale per tensor), 16-bit
activations. Data-free (compressed-tensors preset NVFP4A16)."""

from __future__ import annotations

from factory.methods.preset_base import FP4_SERVING, PresetFormat


class NVFP4A16(PresetFormat):
    name = "nvfp4a16"
    summary = "NVFP4 weights only: FP4, groups of 16, FP8 scales; data-free"
    scheme = "W4A16-NVFP4"
    preset = "NVFP4A16"
    supported_bits = (4,)
    default_group_size = 16
    fixed_group_size = (16, "nvfp4a16's groups are 16 weights")
    input_group = 16
    weights_format = "FP4 E2M1, groups of 16 with FP8 E4M3 scales and one global scale per tensor"
    serving = FP4_SERVING
