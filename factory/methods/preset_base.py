"""The floating-point formats people serve (FP8, NVFP4, MXFP4) and W4AFP8: compressed-tensors' preset
schemes, applied by llm-compressor's QuantizationModifier (RTN onto the format's grid; a calibrated
format observes activations on the calibration set first).

Each format is one small class (its own module) naming the preset; the format fixes the bit width, the
scale groups and the activations, so a recipe gives only `weights: {bits: N}`. The checkpoint is
compressed-tensors: vLLM serves it packed on the hardware the class names (`serving`); transformers
loads it anywhere by decompressing the weights to 16 bits (and fake-quantizes the activations where the
format quantizes them), which is how the CPU scores in its card are measured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from factory.methods.base import CardFacts
from factory.methods.llmcompressor_base import LLMCompressorMethod
from factory.recipe import Strict

if TYPE_CHECKING:
    from factory.recipe import Settings


class PresetOptions(Strict):
    """Options every preset format takes (none yet beyond these)."""


class FP8Options(PresetOptions):
    model_free: bool | None = Field(
        None, description="Build through llm-compressor's model_free_ptq: safetensors shard by shard without loading "
        "the model (a 70B data-free build in about one shard of memory). Only for data-free schemes. Default: on for "
        "fp8-dynamic without kv_cache, off otherwise.")
    kv_cache: Literal["fp8"] | None = Field(
        None, description="fp8: also quantize the KV cache to FP8 E4M3 with per-tensor scales calibrated on the "
        "calibration set (llm-compressor's kv_cache_scheme); the scales are written to the checkpoint and vLLM "
        "reads them (`--kv-cache-dtype fp8`).")


class PresetFormat(LLMCompressorMethod):
    preset: ClassVar[str]  # compressed-tensors' preset scheme name
    scheme: ClassVar[str]  # the scheme label (repo names, tags): bits of weights and activations, and the format
    weights_format: ClassVar[str]  # the card's words
    activations_format: ClassVar[str] = "not quantized (16-bit)"
    # weights per scale along a layer's input (16, 32, 128), or a 2-D block (out, in); None: none such
    input_group: ClassVar[int | None] = None
    block: ClassVar[tuple[int, int] | None] = None
    activations = "fixed"
    default_symmetric = None
    Options = PresetOptions

    def check(self, recipe):
        out = super().check(recipe)
        bits = recipe.weights.bits
        if bits not in self.supported_bits:
            others = {8: "fp8-dynamic, fp8 or fp8-block", 4: "nvfp4, nvfp4a16, mxfp4, mxfp4a16 or w4afp8"}.get(bits, "rtn, gptq or awq")
            out = [(loc, f"{self.name} is a {self.supported_bits[0]}-bit format, it has no {bits}-bit form "
                    f"(for {bits} bits: {others})") if loc == ("weights", "bits") else (loc, msg) for loc, msg in out]
        options = recipe.method_options
        if getattr(options, "model_free", None):
            why = ("it calibrates its activation scales on data" if self.needs_calibration else
                   "the FP8 KV cache's scales are calibrated on data" if getattr(options, "kv_cache", None) else None)
            if why:
                out.append(((self.name, "model_free"), f"a model-free build needs a data-free scheme, and {self.name} "
                            f"is not one here: {why} (model-free: fp8-dynamic, fp8-block, rtn)"))
        return out

    def runs_model_free(self, settings: "Settings") -> bool:
        # resolved in the options block (fp8-dynamic: on unless kv_cache; the others: off unless asked)
        return bool((settings.options or {}).get("model_free"))

    def uses_calibration(self, options) -> bool:
        return self.needs_calibration or getattr(options, "kv_cache", None) is not None

    def checks_group_divisibility(self) -> bool:
        return False  # the format's own groups: layer_shape_problem

    def layer_shape_problem(self, settings, inputs, outputs):
        if self.block is not None:
            rows, cols = self.block
            for sizes, edge in ((outputs, rows), (inputs, cols)):
                for name, size in sizes.items():
                    if size % edge:
                        return (f"{self.name}'s {rows}x{cols} blocks do not divide the model's {name} ({size}); "
                                f"use fp8-dynamic or fp8 for this model")
        if self.input_group is not None:
            for name, size in inputs.items():
                if size % self.input_group:
                    return (f"{self.name}'s groups of {self.input_group} weights do not divide the model's "
                            f"{name} ({size})")
        return None

    def scheme_label(self, settings: "Settings") -> str:
        return self.scheme + ("-KV8" if (settings.options or {}).get("kv_cache") else "")

    def quantization_scheme(self, settings: "Settings") -> dict:
        from compressed_tensors.quantization import preset_name_to_scheme

        return dict(config_groups={"group_0": preset_name_to_scheme(self.preset, ["Linear"])}, ignore=settings.ignore)

    def kv_cache_scheme(self, settings: "Settings"):
        if not (settings.options or {}).get("kv_cache"):
            return None
        from compressed_tensors.quantization import QuantizationArgs

        return QuantizationArgs(num_bits=8, type="float", strategy="tensor", symmetric=True, dynamic=False)

    def modifiers(self, settings, quant):
        from llmcompressor.modifiers.quantization import QuantizationModifier

        return [QuantizationModifier(**quant, kv_cache_scheme=self.kv_cache_scheme(settings))]

    def quantize(self, base_dir, settings, out_dir, recipe_dir):
        if self.runs_model_free(settings):
            figures = self.quantize_model_free(base_dir, settings, out_dir)
        else:
            figures = super().quantize(base_dir, settings, out_dir, recipe_dir)
        kv = self.kv_cache_scheme(settings) is not None
        return {**figures, "weights_format": self.weights_format, "activations_format": self.activations_format,
                "kv_cache_format": "FP8 E4M3, per-tensor scales calibrated (k_scale/v_scale in the checkpoint)"
                if kv else None, "kv_cache_scales": _count_kv_scales(out_dir) if kv else None}

    def card_facts(self, settings: "Settings") -> CardFacts:
        kv = ""
        if self.kv_cache_scheme(settings) is not None:
            kv = (" The KV cache is FP8 too: its per-tensor scales (`k_scale`, `v_scale` of each attention layer) "
                  "are in the checkpoint and vLLM reads them with `--kv-cache-dtype fp8`.")
        return CardFacts(
            engine=(f"llm-compressor `model_free_ptq` (shard by shard, no model built; compressed-tensors preset "
                    f"`{self.preset}`)" if self.runs_model_free(settings) else
                    f"llm-compressor `oneshot` (QuantizationModifier, compressed-tensors preset `{self.preset}`)"),
            format="compressed-tensors",
            tags=("compressed-tensors", "llm-compressor", self.preset.lower().replace("_", "-")),
            load_note="Loading needs `compressed-tensors` (installed with llm-compressor, or "
                      "`pip install compressed-tensors`). transformers decompresses the weights to 16 bits when "
                      "it loads them (on CPU, and on GPUs without kernels for this format), so there it saves no "
                      "memory" + ("; the activations are then fake-quantized in the forward pass, as the "
                                  "scores in this card were measured" if self.activations_format.startswith(
                                      ("FP8", "FP4")) else "") + ".",
            serve_note=(f"Packed, it is served by {self.serving}:\n\n```bash\nvllm serve {{repo_id}}"
                        + (" --kv-cache-dtype fp8" if kv else "") + f"\n```\n{kv}"),
            weights_part="parts/weights-format.md.j2",
        )


def _count_kv_scales(out_dir) -> int:
    """How many k_scale / v_scale tensors the saved checkpoint holds (the card's proof they were written)."""
    from safetensors import safe_open

    count = 0
    for path in out_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            count += sum(1 for key in f.keys() if key.endswith((".k_scale", ".v_scale")))
    return count


FP8_SERVING = ("vLLM: FP8 kernels on compute capability >= 8.9 (Ada, Hopper, Blackwell); on 8.0-8.6 (Ampere) "
               "weight-only FP8 through Marlin, the activations left in 16 bits")
FP4_SERVING = ("vLLM: native FP4 on compute capability >= 10.0 (Blackwell); below that, weight-only FP4 through "
               "Marlin (>= 8.0) or emulation, the activations left in 16 bits")
