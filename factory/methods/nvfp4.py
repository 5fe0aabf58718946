"""NVFP4: FP4 E2M1 weights and activations in groups of 16 with FP8 E4M3 group scales under one FP32
global scale per tensor; the activations' global scales are calibrated on data (compressed-tensors
preset NVFP4)."""

from __future__ import annotations

from factory.methods.preset_base import FP4_SERVING, PresetFormat


class NVFP4(PresetFormat):
    name = "nvfp4"
    summary = "NVFP4 W4A4: FP4 weights and activations, groups of 16, FP8 scales, calibrated global scales"
    scheme = "W4A4-NVFP4"
    preset = "NVFP4"
    needs_calibration = True
    supported_bits = (4,)
    default_group_size = 16
    fixed_group_size = (16, "nvfp4's groups are 16 weights")
    input_group = 16
    weights_format = "FP4 E2M1, groups of 16 with FP8 E4M3 scales and one global scale per tensor"
    activations_format = "FP4 E2M1, dynamic groups of 16 (global scale calibrated)"
    serving = FP4_SERVING
