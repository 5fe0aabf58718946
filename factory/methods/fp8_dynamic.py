"""FP8 dynamic: FP8 E4M3 weights with one scale per output channel, activations quantized to FP8 per token
at run time. Data-free (compressed-tensors preset FP8_DYNAMIC), so built model-free by default."""

from __future__ import annotations

from pydantic import model_validator

from factory.methods.base import PER_CHANNEL
from factory.methods.preset_base import FP8_SERVING, FP8Options, PresetFormat


class FP8DynamicOptions(FP8Options):
    @model_validator(mode="before")
    @classmethod
    def _model_free_by_default(cls, data):
        """Data-free: model-free unless told not to, or unless the FP8 KV cache needs calibration data. The
        resolved choice is in the settings, so the build fingerprint says which path made the weights."""
        if isinstance(data, dict) and data.get("model_free") is None:
            data = {**data, "model_free": data.get("kv_cache") is None}
        return data


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
    Options = FP8DynamicOptions
