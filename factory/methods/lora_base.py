"""LoRA fine-tuning methods (QLoRA, IR-QLoRA): the artifact stage's `finetune` verb.

The recipe's `finetune:` block (factory.recipe.FineTune) holds the training settings; the engine
(factory.engines.lora.train) trains; the method says how the trainable model is made from the
base (`attach`), how it is saved (`save`) and what is published.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from factory.engines.lora.data import alpaca_commit, describe, load_records
from factory.engines.lora.train import check_targets, train
from factory.methods.base import BuildContext, Problem, QuantMethod

if TYPE_CHECKING:
    from factory.recipe import Recipe, Settings


class LoRAMethod(QuantMethod):
    stage = "finetune"
    takes_finetune = True
    nf4_reference = True  # the LoRA-FT table's NormalFloat row: the NF4 base, not fine-tuned
    supported_bits = (4,)
    default_group_size = 64
    fixed_group_size = (64, "NF4 uses a fixed block size of 64")
    default_symmetric = None
    libraries = ("peft", "bitsandbytes", "accelerate")
    supported_kinds = ("causal-lm",)
    unsupported_kind_reason = "the fine-tuning stage trains causal LMs on Alpaca text (the paper's LoRA-FT track)"
    base_quantization: str | None = None  # how the published adapter's base is loaded ("nf4"), if not as saved

    def check(self, recipe: "Recipe") -> list[Problem]:
        out = [p for p in super().check(recipe) if p[0] != ("weights", "bits")]
        if recipe.weights.bits != 4:
            out.append((("weights", "bits"), f"{self.name} fine-tunes a 4-bit (NF4) base, not a {recipe.weights.bits}-bit one"))
        return out

    # The training engine (prompt template, loss mask, training setup) and this glue shape the adapter
    # (the glue by definition: the module's card text and recipe checks do not retrain a build).
    engine_modules: tuple[str, ...] = ("factory.engines.lora.train", "factory.engines.lora.data",
                                       "factory.methods.lora_base:LoRAMethod._records",
                                       "factory.methods.lora_base:LoRAMethod.build",
                                       "factory.methods.lora_base:_point_adapter_at_hub_base")

    def scheme_label(self, settings: "Settings") -> str:
        ft = settings.finetune
        return f"NF4-LoRA-r{ft.lora.r}" if ft is not None else "NF4-LoRA"

    # ------------------------------------------------------------ build

    def _records(self, ctx: BuildContext) -> tuple[list[dict], str | None]:
        data = ctx.settings.finetune.data
        commit = alpaca_commit(data.revision) if data.source == "alpaca" else None
        path = ctx.recipe_dir / data.path if data.path else None
        return load_records(data.source, path, data.samples, revision=commit), commit

    def preflight(self, ctx: BuildContext) -> None:
        """A target list that names no layer of the model, or data that does not load, stops here."""
        check_targets(ctx.settings.finetune.lora.target_modules, ctx.base_dir, ctx.model_id)
        self._records(ctx)

    def build(self, ctx: BuildContext, out: Path) -> dict:
        ft = ctx.settings.finetune
        records, commit = self._records(ctx)
        figures = train(self, ctx.base_dir, ft, records, out, ctx.work_dir, ctx.log)
        figures["data"] = describe(ft.data.source, ft.data.path, len(records), commit)
        if commit:
            figures["data_commit"] = commit
        _point_adapter_at_hub_base(out, ctx.model_id, ctx.model_revision)
        return {**figures, "format": self.output_format, "base_quantization": self.base_quantization,
                "compression_ratio": None}  # an adapter, or a full-size merged checkpoint: no ratio to show

    @property
    def title(self) -> str:
        return self.paper_name or self.name

    # What the engine calls (factory.engines.lora.train.AdapterRecipe).
    figures: dict = {}  # the manifest's "engine" line

    def attach(self, base_dir: Path, ft) -> tuple:
        raise NotImplementedError

    def save(self, model, tokenizer, base_dir: Path, out: Path, ft, log) -> None:
        raise NotImplementedError


def _point_adapter_at_hub_base(out: Path, model_id: str, revision: str | None) -> None:
    """peft records the local base path; the published adapter names the Hub base (and its revision)."""
    config = out / "adapter_config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        data["base_model_name_or_path"] = model_id
        data["revision"] = revision
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
