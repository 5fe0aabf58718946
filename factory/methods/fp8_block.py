"""FP8 block (DeepSeek-V3 style): FP8 E4M3 weights with one scale per 128x128 block, activations FP8 per
group of 128 at run time. Data-free (compressed-tensors preset FP8_BLOCK)."""

from __future__ import annotations

from factory.methods.preset_base import FP8_SERVING, FP8Options, PresetFormat


class FP8Block(PresetFormat):
    name = "fp8-block"
    summary = "FP8 E4M3 weights in 128x128 blocks, FP8 activations per 128 at run time; data-free"
    scheme = "W8A8-FP8-block128"
    preset = "FP8_BLOCK"
    supported_bits = (8,)
    default_group_size = 128
    fixed_group_size = (128, "fp8-block's blocks are 128x128")
    block = (128, 128)
    weights_format = "FP8 E4M3, one scale per 128x128 block"
    activations_format = "FP8 E4M3, dynamic scales per group of 128"
    serving = FP8_SERVING
    Options = FP8Options
