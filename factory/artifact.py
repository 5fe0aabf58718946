"""A build's artifact: what the quantize (or finetune) stage produced, how to load it, what to upload.

checkpoint  model/ is a whole checkpoint (compressed-tensors, bitsandbytes, simulated bf16).
adapter     model/ is a peft adapter over the base checkpoint (LoRA fine-tuning).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Artifact:
    kind: Literal["checkpoint", "adapter"]
    path: Path
    base_path: Path | None = None  # the base checkpoint the build was made from

    @classmethod
    def from_record(cls, kind: str, path: Path, record) -> "Artifact":
        base = record.get("base_model_path") if record is not None else None
        return cls(kind, path, Path(base) if base else None)

    def harness_model_args(self) -> dict[str, str]:
        """lm-eval / lmms-eval `hf` model arguments that load this artifact."""
        if self.kind == "adapter":
            return {"pretrained": str(self.base_path), "peft": str(self.path)}
        return {"pretrained": str(self.path)}

    def load(self, model_kind: str, **kwargs):
        """The model, as a user would load it (base + adapter for an adapter)."""
        from factory.loading import model_class

        cls = model_class(model_kind)
        if self.kind == "adapter":
            from peft import PeftModel

            return PeftModel.from_pretrained(cls.from_pretrained(self.base_path, **kwargs), self.path)
        return cls.from_pretrained(self.path, **kwargs)

    def upload_files(self) -> dict[str, Path]:
        """path in the repo -> local file: everything the stage wrote, at the top of the repo."""
        return {str(p.relative_to(self.path)): p for p in sorted(self.path.rglob("*")) if p.is_file()}
