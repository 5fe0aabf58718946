"""A build's artifact: what the artifact stage produced, how to load it, what to upload.

What differs between kinds lives in one class per kind (KINDS), chosen by the method's
`artifact_kind`; nothing else asks which kind it holds:

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
    def _kind(self) -> "Checkpoint":
        return KINDS[self.kind]

    @property
    def gguf_file(self) -> str | None:
        """The name of the GGUF file in `path` (gguf artifacts only)."""
        return self._kind.gguf_file(self)

    @property
    def whole_checkpoint(self) -> bool:
        """A model folder that loads as it is (vLLM, lmms-eval's llava_hf): not an adapter, not a GGUF file."""
        return self._kind.whole_checkpoint

    @property
    def loaded_as(self) -> str | None:
        """How evaluation loads it, where that differs from how a user runs it."""
        return self._kind.loaded_as

    @property
    def weights_dir(self) -> Path:
        """The folder whose weights a full model holds in memory (the base's, under an adapter)."""
        return self._kind.weights_dir(self)

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
            model = self._kind.unwrapped(self.load("causal-lm", dtype=compute_dtype()))
            return {"pretrained": model.eval(), "tokenizer": load_preprocessor("causal-lm", self.path)}
        return self._kind.harness_model_args(self)

    def preprocessor(self, model_kind: str):
        """The tokenizer (or processor) that comes with the artifact."""
        return self._kind.preprocessor(self, model_kind)

    def load(self, model_kind: str, **kwargs):
        """The model, as a user would load it (base + adapter for an adapter)."""
        return self._kind.load(self, model_class(model_kind), **kwargs)

    def config_source(self) -> dict:
        """from_pretrained arguments that read the model's config."""
        return self._kind.config_source(self)

    def served_as(self) -> str | None:
        """How a user loads it in transformers, where the speed stage's card line says more than the runtime."""
        return self._kind.served_as(self)

    def upload_files(self) -> dict[str, Path]:
        """path in the repo -> local file: everything the stage wrote, at the top of the repo."""
        return {str(p.relative_to(self.path)): p for p in sorted(self.path.rglob("*")) if p.is_file()}


class Checkpoint:
    """A whole checkpoint folder, loaded as saved."""

    loaded_as: str | None = None
    whole_checkpoint = True
    card_usage = "parts/usage-checkpoint.md.j2"

    def gguf_file(self, a: Artifact) -> str | None:
        return None

    def weights_dir(self, a: Artifact) -> Path:
        return a.path

    def unwrapped(self, model):
        return model

    def harness_model_args(self, a: Artifact) -> dict:
        return {"pretrained": str(a.path)}

    def preprocessor(self, a: Artifact, model_kind: str):
        return load_preprocessor(model_kind, a.path)

    def load(self, a: Artifact, cls, **kwargs):
        return cls.from_pretrained(a.path, **a.load_kwargs(), **kwargs)

    def config_source(self, a: Artifact) -> dict:
        return {"pretrained_model_name_or_path": a.path}

    def served_as(self, a: Artifact) -> str | None:
        return None


class Adapter(Checkpoint):
    """A peft adapter over the base checkpoint."""

    whole_checkpoint = False
    card_usage = "parts/usage-adapter.md.j2"

    def weights_dir(self, a: Artifact) -> Path:
        return a.base_path or a.path

    def unwrapped(self, model):
        return model.base_model.model  # the transformers model, peft's LoRA layers injected

    def harness_model_args(self, a: Artifact) -> dict:
        return {"pretrained": str(a.base_path), "peft": str(a.path)}

    def load(self, a: Artifact, cls, **kwargs):
        from peft import PeftModel

        return PeftModel.from_pretrained(cls.from_pretrained(a.base_path, **a.load_kwargs(), **kwargs), a.path)

    def config_source(self, a: Artifact) -> dict:
        return {"pretrained_model_name_or_path": a.base_path}

    def served_as(self, a: Artifact) -> str:
        quant = " in bitsandbytes NF4" if a.base_quantization == "nf4" else ""
        return f"the base{quant} with the peft adapter over it, as users load it (not the merged model)"


class GGUF(Checkpoint):
    """One .gguf file: weights and tokenizer."""

    whole_checkpoint = False
    card_usage = "parts/usage-gguf.md.j2"

    loaded_as = ("GGUF file through transformers (gguf_file=), weights dequantized on load, tokenized with the "
                 "base model's tokenizer (which the file's tokenizer metadata reproduces, checked at build time)")

    def gguf_file(self, a: Artifact) -> str:
        found = sorted(p.name for p in a.path.glob("*.gguf"))
        if len(found) != 1:
            raise RuntimeError(f"{a.path}: expected one .gguf file, found {len(found)}")
        return found[0]

    def harness_model_args(self, a: Artifact) -> dict:
        # transformers' GGUF tokenizer reader is not exact for every model (LLaMA-3): the base's tokenizer,
        # which the file's metadata was checked to reproduce, is what llama.cpp's tokenization equals
        return {"pretrained": str(a.path), "gguf_file": a.gguf_file,
                **({"tokenizer": str(a.base_path)} if a.base_path else {})}

    def preprocessor(self, a: Artifact, model_kind: str):
        """The base model's tokenizer (see harness_model_args), or the file's own where the base is not known."""
        if a.base_path:
            return load_preprocessor(model_kind, a.base_path)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(a.path, gguf_file=a.gguf_file)

    def load(self, a: Artifact, cls, **kwargs):
        return cls.from_pretrained(a.path, gguf_file=a.gguf_file, **kwargs)

    def config_source(self, a: Artifact) -> dict:
        return {"pretrained_model_name_or_path": a.path, "gguf_file": a.gguf_file}  # the config is in the file


KINDS: dict[str, Checkpoint] = {"checkpoint": Checkpoint(), "adapter": Adapter(), "gguf": GGUF()}

# The LoRA builds' reference row: the base as bitsandbytes NF4 (double quantization), not fine-tuned.
NF4_REFERENCE = "bitsandbytes nf4 double-quant base, not fine-tuned"
