"""FP8 dynamic: FP8 E4M3 weights with one scale per output channel, activations quantized to FP8 per token
at run time. Data-free (compressed-tensors preset FP8_DYNAMIC)."""

from __future__ import annotations

from factory.methods.base import PER_CHANNEL
from factory.methods.preset_base import FP8_SERVING, FP8Options, PresetFormat


class FP8Dynamic(PresetFormat):
    name = "fp8-dynamic"
    summary = "FP8 E4M3 weights (per channel), FP8 activations scaled per token at run time; data-free"
    scheme = "W8A8-FP8-dynamic"
    preset = "FP8_DYNAMIC"
    supported_bits = (8,)
    default_group_size = PER_CHANNEL
    fixed_group_size = (PER_CHANNEL, "fp8-dynamic has one scale per output channel")
    weights_format = "FP8 E4M3, one scale per output channel"
    activations_format = "FP8 E4M3, dynamic per-token scales"
    serving = FP8_SERVING
    Options = FP8Options
    model_free_default = True  # data-free: no reason to load the model
