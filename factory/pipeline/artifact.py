"""A build's artifact: what the quantize (or finetune) stage produced, how to load it, what to upload.

checkpoint  model/ is a whole checkpoint (compressed-tensors, bitsandbytes, simulated bf16).
adapter     model/ is a peft adapter over the base checkpoint (LoRA fine-tuning).
gguf        model/ holds one .gguf file (weights and tokenizer); transformers loads it with `gguf_file=`
            and dequantizes the weights on load, so it is evaluated through the file alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from factory.engines.loading import compute_dtype, load_preprocessor, model_class, nf4_config


@dataclass(frozen=True)
class Artifact:
    kind: Literal["checkpoint", "adapter", "gguf"]
    path: Path
    base_path: Path | None = None  # the base checkpoint the build was made from
    # how the base is loaded under the adapter (or the checkpoint itself): None (as saved) or "nf4"
    # (bitsandbytes NF4 with double quantization, QLoRA's base)
    base_quantization: str | None = None

    @classmethod
    def from_record(cls, kind: str, path: Path, record) -> "Artifact":
        base = record.get("base_model_path") if record is not None else None
        quant = record.get("base_quantization") if record is not None else None
        return cls(kind, path, Path(base) if base else None, quant)

    @property
    def gguf_file(self) -> str | None:
        """The name of the GGUF file in `path` (gguf artifacts only)."""
        if self.kind != "gguf":
            return None
        found = sorted(p.name for p in self.path.glob("*.gguf"))
        if len(found) != 1:
            raise RuntimeError(f"{self.path}: expected one .gguf file, found {len(found)}")
        return found[0]

    @property
    def loaded_as(self) -> str | None:
        """How evaluation loads it, where that differs from how a user runs it."""
        if self.kind == "gguf":
            return ("GGUF file through transformers (gguf_file=), weights dequantized on load, tokenized with the "
                    "base model's tokenizer (which the file's tokenizer metadata reproduces, checked at build time)")
        return None

    def load_kwargs(self) -> dict:
        """from_pretrained arguments of the base (the NF4 config of a QLoRA base)."""
        if self.base_quantization != "nf4":
            return {}
        import torch

        dtype = torch.float32 if compute_dtype() == "float32" else torch.bfloat16
        return {"quantization_config": nf4_config(dtype, ["lm_head"], double_quant=True)}

    def harness_model_args(self) -> dict:
        """lm-eval / lmms-eval `hf` model arguments that load this artifact.

        An NF4 base is loaded here and handed over as a model object: lm-eval's HFLM takes the
        quantization config from a checkpoint's own config only, and an adapter over it is already
        injected into that model's layers by peft."""
        if self.base_quantization == "nf4":
            model = self.load("causal-lm", dtype=compute_dtype())
            if self.kind == "adapter":
                model = model.base_model.model  # the transformers model, peft's LoRA layers injected
            return {"pretrained": model.eval(), "tokenizer": load_preprocessor("causal-lm", self.path)}
        if self.kind == "adapter":
            return {"pretrained": str(self.base_path), "peft": str(self.path)}
        if self.kind == "gguf":
            # transformers' GGUF tokenizer reader is not exact for every model (LLaMA-3): the base's tokenizer,
            # which the file's metadata was checked to reproduce, is what llama.cpp's tokenization equals
            return {"pretrained": str(self.path), "gguf_file": self.gguf_file,
                    **({"tokenizer": str(self.base_path)} if self.base_path else {})}
        return {"pretrained": str(self.path)}

    def preprocessor(self, model_kind: str):
        """The tokenizer (or processor) that comes with the artifact; for a GGUF, the base model's (see
        harness_model_args), or the file's own where the base is not known."""
        if self.kind == "gguf":
            if self.base_path:
                return load_preprocessor(model_kind, self.base_path)
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(self.path, gguf_file=self.gguf_file)
        return load_preprocessor(model_kind, self.path)

    def load(self, model_kind: str, **kwargs):
        """The model, as a user would load it (base + adapter for an adapter)."""
        cls = model_class(model_kind)
        if self.kind == "adapter":
            from peft import PeftModel

            return PeftModel.from_pretrained(cls.from_pretrained(self.base_path, **self.load_kwargs(), **kwargs),
                                             self.path)
        if self.kind == "gguf":
            return cls.from_pretrained(self.path, gguf_file=self.gguf_file, **kwargs)
        return cls.from_pretrained(self.path, **self.load_kwargs(), **kwargs)

    def upload_files(self) -> dict[str, Path]:
        """path in the repo -> local file: everything the stage wrote, at the top of the repo."""
        return {str(p.relative_to(self.path)): p for p in sorted(self.path.rglob("*")) if p.is_file()}


# The LoRA builds' reference row: the base as bitsandbytes NF4 (double quantization), not fine-tuned.
NF4_REFERENCE = "bitsandbytes nf4 double-quant base, not fine-tuned"
