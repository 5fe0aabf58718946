"""FP8 static: FP8 E4M3 weights and activations with one scale per tensor each, the activation scales
observed on the calibration set (compressed-tensors preset FP8)."""

from __future__ import annotations

from factory.methods.base import PER_TENSOR
from factory.methods.preset_base import FP8_SERVING, FP8Options, PresetFormat


class FP8(PresetFormat):
    name = "fp8"
    summary = "FP8 E4M3 weights and activations, static per-tensor scales calibrated on data"
    scheme = "W8A8-FP8-static"
    preset = "FP8"
    needs_calibration = True
    supported_bits = (8,)
    default_group_size = PER_TENSOR
    fixed_group_size = (PER_TENSOR, "fp8 has one weight scale per tensor (fp8-dynamic: per channel)")
    weights_format = "FP8 E4M3, one scale per tensor"
    activations_format = "FP8 E4M3, static per-tensor scales (calibrated)"
    serving = FP8_SERVING
    Options = FP8Options
