"""The registries: a recipe's `method:` name -> the class that implements it; a stage's name -> its class.

Entries are `"module:Class"` strings, imported on first use, so that `validate` and `plan` load a
method's module (its options and checks) without importing torch: method modules import their
heavy libraries inside `quantize`. Adding a method = one module + one line here.
"""

from __future__ import annotations

import functools
import importlib

from factory.core.errors import UserError

BUILTIN: dict[str, str] = {
    "rtn": "factory.methods.rtn:RTN",
    "gptq": "factory.methods.gptq:GPTQ",
    "awq": "factory.methods.awq:AWQ",
    "smoothquant": "factory.methods.smoothquant:SmoothQuant",
    "nf4": "factory.methods.nf4:NF4",
    "int8": "factory.methods.int8:Int8",
    "pb-llm": "factory.methods.pb_llm:PBLLM",
    "billm": "factory.methods.billm:BiLLM",
    "slim-llm": "factory.methods.slim_llm:SliMLLM",
    "db-llm": "factory.methods.db_llm:DBLLM",
    "quip": "factory.methods.quip:QuIP",
    "spinquant-gptq": "factory.methods.spinquant_gptq:SpinQuantGPTQ",
    "autoround": "factory.methods.autoround:AutoRound",
    "gguf": "factory.methods.gguf:GGUF",
    "qlora": "factory.methods.qlora:QLoRA",
    "ir-qlora": "factory.methods.ir_qlora:IRQLoRA",
    "fp8-dynamic": "factory.methods.fp8_dynamic:FP8Dynamic",
    "fp8": "factory.methods.fp8:FP8",
    "fp8-block": "factory.methods.fp8_block:FP8Block",
    "nvfp4": "factory.methods.nvfp4:NVFP4",
    "nvfp4a16": "factory.methods.nvfp4a16:NVFP4A16",
    "mxfp4": "factory.methods.mxfp4:MXFP4",
    "mxfp4a16": "factory.methods.mxfp4a16:MXFP4A16",
    "w4afp8": "factory.methods.w4afp8:W4AFP8",
    "mixed": "factory.methods.mixed:Mixed",
    "autoscheme": "factory.methods.autoscheme:AutoSchemeMethod",
}

_entries: dict[str, object] = dict(BUILTIN)
_version = 0  # bumped by register/unregister: caches keyed on it (the recipe model) rebuild


def _instance(table: dict, name: str, what: str):
    """An instance of the class registered as `name`: a `"module:Class"` string is imported on first use."""
    target = table.get(name)
    if target is None:
        raise UserError(f"unknown {what} {name!r} (known: {', '.join(table)})")
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
    return target()


def method_names() -> list[str]:
    return list(_entries)


def registry_version() -> int:
    return _version


def register(name: str, target) -> None:
    """Add a method: `target` is a `"module:Class"` string or the class itself (tests, plugins)."""
    global _version
    _entries[name] = target
    _version += 1
    get_method.cache_clear()


def unregister(name: str) -> None:
    global _version
    _entries.pop(name, None)
    _version += 1
    get_method.cache_clear()


@functools.cache
def get_method(name: str):
    """The method instance for a recipe's `method:` value."""
    method = _instance(_entries, name, "method")
    if method.name != name:
        raise RuntimeError(f"registry entry {name!r} points at a method named {method.name!r}")
    return method


def all_methods() -> list:
    return [get_method(name) for name in _entries]


# ---------------------------------------------------------------- stages

# The pipeline's stages (factory.pipeline.stage.Stage), imported on first use. Adding a stage = one
# module + one line here (+ its place in PIPELINE if `publish` runs it).
STAGES: dict[str, str] = {
    "artifact": "factory.stages.artifact:ArtifactStage",
    "evaluate": "factory.stages.evaluate:EvaluateStage",
    "speed": "factory.stages.speed:SpeedStage",
    "card": "factory.stages.card:CardStage",
    "push": "factory.stages.push:PushStage",
}
PIPELINE: tuple[str, ...] = ("artifact", "evaluate", "speed", "card", "push")  # what `publish` runs, in order


def register_stage(name: str, target, publish_after: str | None = None) -> None:
    """Add a stage (`"module:Class"` or the class); `publish_after`: run it in `publish` after that stage."""
    global PIPELINE
    STAGES[name] = target
    if publish_after is not None:
        at = PIPELINE.index(publish_after) + 1
        PIPELINE = PIPELINE[:at] + (name,) + PIPELINE[at:]
    get_stage.cache_clear()


def unregister_stage(name: str) -> None:
    global PIPELINE
    STAGES.pop(name, None)
    PIPELINE = tuple(s for s in PIPELINE if s != name)
    get_stage.cache_clear()


@functools.cache
def get_stage(name: str):
    """The stage instance registered under `name`."""
    return _instance(STAGES, name, "stage")


def stage_named(name: str):
    """The stage registered as `name`, or whose verb it is (quantize, finetune: the artifact stage)."""
    if name in STAGES:
        return get_stage(name)
    for stage in all_stages():
        if name in stage.commands():
            return stage
    raise UserError(f"unknown stage {name!r} (known: {', '.join(STAGES)})")


def all_stages() -> list:
    return [get_stage(name) for name in STAGES]


def pipeline() -> list:
    """The stages `publish` runs, in order."""
    return [get_stage(name) for name in PIPELINE]
