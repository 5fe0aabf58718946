"""W4AFP8: symmetric INT4 weights in groups of 128, activations quantized to FP8 per token at run time.
Data-free (compressed-tensors preset W4AFP8)."""

from __future__ import annotations

from factory.methods.preset_base import PresetFormat


class W4AFP8(PresetFormat):
    name = "w4afp8"
    summary = "INT4 weights (groups of 128), FP8 activations per token at run time; data-free"
    scheme = "W4A8-FP8-g128"
    preset = "W4AFP8"
    supported_bits = (4,)
    default_group_size = 128
    fixed_group_size = (128, "w4afp8's groups are 128 weights")
    input_group = 128
    weights_format = "INT4 symmetric, groups of 128"
    activations_format = "FP8 E4M3, dynamic per-token scales"
    serving = ("vLLM: INT4-weight x FP8-activation kernels on compute capability 9.0 (Hopper); elsewhere "
               "serve the weights only (INT4 through Marlin, >= 8.0)")
