"""LLM.int8 (Dettmers et al. 2022) through bitsandbytes."""

from __future__ import annotations

from factory.engines.loading import bitsandbytes_skip_modules
from factory.methods.base import PER_CHANNEL
from factory.methods.bitsandbytes_base import BitsAndBytesMethod


class Int8(BitsAndBytesMethod):
    name = "int8"
    summary = "LLM.int8: 8-bit per-channel with fp16 outlier columns, bitsandbytes"
    supported_bits = (8,)
    default_group_size = PER_CHANNEL
    fixed_group_size = (PER_CHANNEL, "bitsandbytes int8 is per-channel only")

    def config(self, settings):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=bitsandbytes_skip_modules(settings.ignore))
