"""NF4 (Dettmers et al. 2023, QLoRA's NormalFloat 4-bit) through bitsandbytes."""

from __future__ import annotations

from factory.engines.loading import nf4_config
from factory.methods.bitsandbytes_base import BitsAndBytesMethod


class NF4(BitsAndBytesMethod):
    name = "nf4"
    paper_name = "NormalFloat"
    summary = "4-bit NormalFloat blocks of 64, bitsandbytes"
    supported_bits = (4,)
    default_group_size = 64
    fixed_group_size = (64, "bitsandbytes NF4 uses a fixed block size of 64")

    def config(self, settings):
        import torch

        return nf4_config(torch.bfloat16, settings.ignore)
