"""What a method is: one class that owns its options, its checks, how it quantizes and what its card says.

A method module must import without torch (the registry loads it for `validate` and `plan`);
libraries that do the work are imported inside `quantize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Literal

from pydantic import BaseModel

from factory.core.code_digest import code_digest
from factory.recipe.fields import PER_CHANNEL, PER_TENSOR  # re-exported: the methods read them from here

if TYPE_CHECKING:
    from factory.recipe import Recipe, Settings

OutputFormat = Literal["compressed-tensors", "bitsandbytes", "simulated", "gguf", "peft-adapter"]
Runtime = Literal["transformers", "vllm", "llama.cpp"]
Problem = tuple[tuple, str]  # (path of the recipe field, message)


@dataclass(frozen=True)
class CardFacts:
    """What a model card says about how a build was made and how to run it."""

    engine: str  # e.g. "llm-compressor `oneshot`"
    format: str  # what the files hold
    tags: tuple[str, ...]
    load_note: str  # what loading needs
    serve_note: str  # Markdown: how to serve it, or why a runtime cannot
    library_name: str = "transformers"  # the card's library_name (the Hub's library filter)
    data_note: str = ""  # Markdown: what data beyond the base shaped the weights, and what it was measured to do
    base_model_relation: str = "quantized"  # the Hub's relation to the base: quantized, adapter or finetune
    headline: str = ""  # what the build is, the card's first words ("": "<METHOD> <scheme> quantization")
    # The card's parts (model_cards/parts/) that differ by method; each reads the stage record its method wrote.
    notice_part: str = ""  # a notice under the title (simulated storage)
    training_part: str = ""  # a section on the training run (LoRA fine-tuning)
    weights_part: str = "parts/weights-int.md.j2"  # the Quantization table's rows on weights and activations


def simulated_note(method: str) -> str:
    """The console note of a method whose output is simulated quantization."""
    return (f"{method} writes simulated quantization: the dequantized weights at full size, "
            "as the paper evaluates it (no memory saving, no packed runtime)")


@dataclass(frozen=True)
class BuildContext:
    """What a method is given to build one (recipe, model): the settings and the base on disk, not the pipeline."""

    settings: "Settings"
    model_id: str
    model_revision: str | None
    base_dir: Path  # the base checkpoint, a local folder
    recipe_dir: Path  # where the recipe's relative paths start
    work_dir: Path  # scratch that outlives a killed run (resumable training checkpoints); removed once built
    log: Callable[[str], None] = print


class QuantMethod:
    """Base class of every method. Subclasses set the class attributes and implement `quantize`."""

    name: ClassVar[str]
    paper_name: ClassVar[str | None] = None  # the name in Huang et al. 2024's tables, if it is there
    summary: ClassVar[str] = ""
    output_format: ClassVar[OutputFormat]
    # distributions whose versions shape the output (fingerprinted with torch and transformers)
    libraries: ClassVar[tuple[str, ...]] = ()
    needs_calibration: ClassVar[bool] = False
    supported_bits: ClassVar[tuple[int, ...]]
    default_group_size: ClassVar[int | str] = 128
    # a group size the format fixes (NF4's 64-weight blocks), with the reason shown when a recipe differs
    fixed_group_size: ClassVar[tuple[int | str, str] | None] = None
    default_symmetric: ClassVar[bool | None] = True  # None: the format has no such choice
    # "fixed": the format itself quantizes activations (FP8, NVFP4, W4AFP8), so no `activations:` block
    activations: ClassVar[Literal["none", "optional", "required", "fixed"]] = "none"
    # activation bit widths (dynamic per token) the method builds, weights at the same width
    activation_bits: ClassVar[tuple[int, ...]] = (8,)
    runtimes: ClassVar[tuple[Runtime, ...]] = ("transformers",)
    # model kinds the method can build, and why a kind is refused
    supported_kinds: ClassVar[tuple[str, ...]] = ("causal-lm", "llava-next")
    unsupported_kind_reason: ClassVar[str] = ""
    stage: ClassVar[str] = "quantize"  # the artifact stage's verb that builds it (finetune for LoRA)
    # the recipe's `finetune:` block (LoRA training settings) applies to it
    takes_finetune: ClassVar[bool] = False
    # the weights take only the method's values but are stored dequantized at full size (the paper's way)
    simulated: ClassVar[bool] = False
    artifact_kind: ClassVar[Literal["checkpoint", "adapter", "gguf"]] = "checkpoint"
    # the recipe block named after the method (e.g. `gptq: {dampening_frac: 0.01}`), if it has options
    Options: ClassVar[type[BaseModel] | None] = None
    # evaluated beside the base loaded as NF4 without fine-tuning (the paper's LoRA-FT reference row)
    nf4_reference: ClassVar[bool] = False
    # where the packed checkpoint is served, and on which hardware (`factory methods`)
    serving: ClassVar[str] = ""

    # ------------------------------------------------------------ recipe

    def options(self, settings: "Settings") -> BaseModel | None:
        """The method's options for one build, typed (defaults filled in)."""
        if self.Options is None:
            return None
        return self.Options.model_validate(settings.options or {})

    def check(self, recipe: "Recipe") -> list[Problem]:
        """Rules a recipe must keep for this method, beyond its schema."""
        out: list[Problem] = []
        w = recipe.weights
        if w.bits not in self.supported_bits:
            bits = ", ".join(str(b) for b in sorted(self.supported_bits))
            out.append((("weights", "bits"), f"{self.name} supports {bits} bits, not {w.bits}"))
        if self.fixed_group_size is not None:
            size, reason = self.fixed_group_size
            if w.group_size not in (None, size):
                out.append((("weights", "group_size"), reason))
            for i, entry in enumerate(recipe.models):
                if entry.overrides.group_size is not None:
                    out.append((("models", i, "overrides", "group_size"), f"does not apply to {self.name}"))
        for i, entry in enumerate(recipe.models):
            if entry.kind not in self.supported_kinds:
                out.append((("models", i, "kind"), f"{self.name} cannot build {entry.kind} models"
                            + (f": {self.unsupported_kind_reason}" if self.unsupported_kind_reason else "")))
        if self.default_symmetric is None and w.symmetric is not None:
            out.append((("weights", "symmetric"), f"does not apply to {self.name}"))
        if w.group_size == PER_TENSOR and self.default_group_size != PER_TENSOR:
            out.append((("weights", "group_size"), f"per-tensor scales are method fp8's, not {self.name}'s: give a positive integer or 'per-channel'"))
        if self.activations == "fixed" and recipe.activations is not None:
            out.append((("activations",), f"{self.name} fixes its activations itself; remove the activations block"))
        elif self.activations == "required" and recipe.activations is None:
            out.append((("method",), f"{self.name} quantizes activations: add `activations: {{bits: 8}}`"))
        elif self.activations == "none" and recipe.activations is not None:
            out.append((("activations",), f"{self.name} is weight-only; remove the activations block"))
        elif self.activations != "fixed" and recipe.activations is not None:
            a = recipe.activations.bits
            if a not in self.activation_bits:
                shown = ", ".join(str(b) for b in self.activation_bits)
                out.append((("activations", "bits"), f"{self.name} quantizes activations to {shown} bits, not {a}"))
            elif w.bits != a:
                out.append((("activations",), f"{a}-bit activations need {a}-bit weights (W{a}A{a}), not W{w.bits}A{a}"))
        return out

    def uses_calibration(self, options: BaseModel | None) -> bool:
        """Whether a recipe with these options (the method's block, defaults filled in) reads its
        `calibration:` block; a method where data is optional (gguf's importance matrix) says so here."""
        return self.needs_calibration

    # The factory's own modules that compute the output (dotted names, or "module:Class.method" for one
    # definition of a module that also holds card text and checks); their code enters the build
    # fingerprint (factory.core.code_digest). Empty: a library does the work, and its version
    # is fingerprinted instead.
    engine_modules: tuple[str, ...] = ()

    def code_digest(self) -> str | None:
        """A digest of the factory's own code that shapes the output (None: no such code)."""
        return code_digest(self.engine_modules) if self.engine_modules else None

    def paper_bits_label(self, settings: "Settings") -> str:
        """The bit width as the paper's tables write it ("4", "1.7"), to find this setting's row."""
        return str(settings.bits)

    def effective_bits(self, settings: "Settings", record) -> tuple[float | None, str]:
        """Storage bits per quantized weight, scales and kept weights included, and where the figure comes
        from: "counted" when the build's manifest counted it (factory.engines.lowbit methods record `effective_bits`),
        else "nominal": the bits plus one 16-bit scale per group (and a `bits`-wide zero point when asymmetric).
        A method whose format stores more (or less) per group overrides this."""
        counted = record.get("effective_bits") if record is not None else None
        if counted is not None:
            return float(counted), "counted"
        if not isinstance(settings.group_size, int):  # one scale per row: a few bits per thousands of weights
            return float(settings.bits), "nominal"
        overhead = 16 + (settings.bits if settings.symmetric is False else 0)
        return settings.bits + overhead / settings.group_size, "nominal"

    def checks_group_divisibility(self) -> bool:
        """Whether a recipe's integer group size must divide the model's layer widths."""
        return self.fixed_group_size is None

    def layer_shape_problem(self, settings: "Settings", inputs: dict[str, int], outputs: dict[str, int]) -> str | None:
        """Why the model's linear layers (their input and output widths, by config name) do not fit the
        method's fixed blocks, or None. Checked by `validate` when the model's config is on disk."""
        return None

    def scheme_label(self, settings: "Settings") -> str:
        """E.g. W4A16-g128, W8A8."""
        act = settings.activation_bits or 16
        group = "" if settings.group_size == PER_CHANNEL else f"-g{settings.group_size}"
        return f"W{settings.bits}A{act}{group}"

    # ------------------------------------------------------------ build

    def preflight(self, ctx: BuildContext) -> None:
        """Refuse what can only be checked with the base model on disk, before the stage starts (one line, exit 2)."""

    def build(self, ctx: BuildContext, out: Path) -> dict:
        """Write the build's artifact to `out`; return figures for the manifest (at least `engine`,
        `format`, `device`, `peak_gpu_mb`). A quantization method implements `quantize`."""
        return self.quantize(ctx.base_dir, ctx.settings, out, ctx.recipe_dir)

    def quantize(self, base_dir: Path, settings: "Settings", out_dir: Path, recipe_dir: Path) -> dict:
        """Write the quantized checkpoint to `out_dir`; return figures for the manifest."""
        raise NotImplementedError

    def card_facts(self, settings: "Settings") -> CardFacts:
        raise NotImplementedError

    def console_note(self) -> str | None:
        """What validate, quantize and publish say about every build of the method (None: nothing)."""
        return None

    # ------------------------------------------------------------ listing

    def describe(self) -> dict:
        """One row of `factory methods`."""
        return {
            "name": self.name,
            "paper_name": self.paper_name,
            "bits": sorted(self.supported_bits),
            "output_format": self.output_format,
            "runtimes": list(self.runtimes),
            "needs_calibration": self.needs_calibration,
            "activations": self.activations,
            "summary": self.summary,
            "serving": self.serving,
        }
