"""NF4 (Dettmers et al. 2023, QLoRA's NormalFloat 4-bit) through bitsandbytes."""

from __future__ import annotations

from factory.methods.bitsandbytes_base import BitsAndBytesMethod, bitsandbytes_skip_modules


class NF4(BitsAndBytesMethod):
    name = "nf4"
    paper_name = "NormalFloat"
    summary = "4-bit NormalFloat blocks of 64, bitsandbytes"
    supported_bits = (4,)
    default_group_size = 64
    fixed_group_size = (64, "bitsandbytes NF4 uses a fixed block size of 64")

    def config(self, settings):
        import torch

        return self.config_for(torch.bfloat16, settings.ignore)

    def config_for(self, compute_dtype, ignore: list[str]):
        """The NF4 BitsAndBytesConfig with a given compute dtype (the LoRA methods' base reuses it)."""
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                                  llm_int8_skip_modules=bitsandbytes_skip_modules(ignore))
