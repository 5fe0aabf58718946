"""AutoScheme (auto-round): a target average of bits per weight, and auto-round chooses each linear
layer's integer scheme among the candidates (a delta-loss score per layer and scheme on the calibration
set, then a dynamic program under the bit budget); the layers are then quantized onto their chosen grids
(RTN with `iters: 0`, else AutoRound's tuning) and saved as compressed-tensors, one config group per scheme.

Candidates are symmetric integer weight-only schemes sharing the recipe's group size; `weights.bits` is the
widest candidate. `validate` refuses a target outside what the candidates can give, as auto-round counts
bits (a 16-bit scale and a `bits`-wide zero point per group), before any work. The manifest and the card
list the layers each scheme was given and the bits per weight the checkpoint stores (counted from its
tensors: packed weights and scales).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from factory.engines.calibration import calibration_windows
from factory.engines.loading import load_preprocessor, model_class, peak_gpu_mb, reset_gpu_peak, text_tokenizer
from factory.methods.base import PER_CHANNEL, CardFacts
from factory.methods.llmcompressor_base import LLMCompressorMethod
from factory.recipe import Strict

if TYPE_CHECKING:
    from factory.recipe import Settings

INT_BITS = (2, 3, 4, 8)
EDGE = 1e-3  # auto-round snaps a target this close to the range's ends onto them


class AutoSchemeOptions(Strict):
    avg_bits: float | None = Field(
        None, gt=1, le=16, description="Target average bits per weight of the quantized layers, scales and zero "
        "points counted as auto-round counts them (bits + (16 + bits) / group_size for a uniform scheme).")
    candidates: list[int] = Field(
        [2, 4, 8], min_length=2, description="Integer weight widths a layer may get (symmetric, the recipe's "
        "group size); the widest is `weights.bits`.")
    iters: int = Field(0, ge=0, le=10000, description="0: round each layer onto its chosen grid (RTN); N: "
                       "AutoRound's sign-gradient tuning steps per decoder block.")


def auto_round_bits(bits: int, group_size: int) -> float:
    """Bits per weight of a uniform symmetric INT scheme as auto-round counts them (compute_layer_bits: a 16-bit
    scale and, for int, a `bits`-wide zero point per group), when the group size divides the layer."""
    return bits + (16 + bits) / group_size


class AutoSchemeMethod(LLMCompressorMethod):
    name = "autoscheme"
    summary = "auto-round AutoScheme: per-layer INT schemes chosen for a target average bits per weight"
    needs_calibration = True
    supported_bits = INT_BITS
    libraries = ("auto-round", "compressed-tensors")
    supported_kinds = ("causal-lm",)
    unsupported_kind_reason = "not tried on LLaVA-Next here (auto-round scores only the language tower of a VLM)"
    Options = AutoSchemeOptions

    def check(self, recipe):
        out = super().check(recipe)
        options = recipe.method_options
        block = ("autoscheme",) if recipe.autoscheme is not None else ("method",)
        if options.avg_bits is None:
            out.append(((*block, "avg_bits") if recipe.autoscheme is not None else block,
                        "autoscheme needs a target: `autoscheme: {avg_bits: 4.5, candidates: [2, 4, 8]}`"))
            return out
        bad = [b for b in options.candidates if b not in INT_BITS]
        if bad or len(set(options.candidates)) != len(options.candidates):
            out.append((("autoscheme", "candidates"), f"each of 2, 3, 4, 8, once (got {options.candidates})"))
            return out
        if recipe.weights.bits != max(options.candidates):
            out.append((("weights", "bits"), f"must be the widest candidate ({max(options.candidates)}): "
                        f"no layer gets more than weights.bits"))
        group = recipe.weights.group_size if recipe.weights.group_size is not None else self.default_group_size
        if not isinstance(group, int):
            out.append((("weights", "group_size"), "autoscheme needs an integer group size (weights per scale)"))
            return out
        low, high = (auto_round_bits(b, group) for b in (min(options.candidates), max(options.candidates)))
        if not low - EDGE <= options.avg_bits <= high + EDGE:
            out.append((("autoscheme", "avg_bits"),
                        f"{options.avg_bits:g} is outside what the candidates give: {low:.3f} (all W{min(options.candidates)}) "
                        f"to {high:.3f} (all W{max(options.candidates)}) bits per weight at group size {group}, "
                        "a 16-bit scale and a zero point per group counted as auto-round counts them"))
        return out

    def scheme_label(self, settings: "Settings") -> str:
        options = self.options(settings)
        target = f"{options.avg_bits:g}" if options.avg_bits is not None else "x"  # (validate refuses no target)
        return f"AUTO{target}-W{'-'.join(map(str, sorted(options.candidates)))}-g{settings.group_size}"

    def quantize(self, base_dir: Path, settings: "Settings", out_dir: Path, recipe_dir: Path) -> dict:
        import torch
        from auto_round import AutoRound
        from auto_round.auto_scheme.gen_auto_scheme import AutoScheme
        from auto_round.schemes import QuantizationScheme

        options = self.options(settings)
        preprocessor = load_preprocessor(settings.kind, base_dir)
        tokenizer = text_tokenizer(preprocessor)
        cal = settings.calibration
        windows = calibration_windows(cal, tokenizer, recipe_dir)
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
        candidates = [QuantizationScheme(bits=b, group_size=settings.group_size, sym=True, data_type="int", act_bits=16)
                      for b in sorted(options.candidates)]
        reset_gpu_peak()
        model = model_class(settings.kind).from_pretrained(base_dir, dtype=torch.bfloat16)  # auto-round tunes in bf16
        with tempfile.TemporaryDirectory(prefix="factory-autoscheme-") as scratch:
            # AutoScheme reads its data by name only (a str): the calibration windows, as text, in a local JSON file
            data = Path(scratch) / "calibration.json"
            data.write_text(json.dumps([tokenizer.decode(w) for w in windows]))
            common = dict(nsamples=len(windows), seqlen=cal.seq_len, dataset=str(data), device_map=device)
            scheme = AutoScheme(avg_bits=options.avg_bits, options=candidates, enable_torch_compile=False, **common)
            rounder = AutoRound(model, tokenizer, scheme=scheme, iters=options.iters, seed=cal.seed,
                                enable_torch_compile=False, ignore_layers=",".join(
                                    p for p in settings.ignore if p != "lm_head" and not p.startswith("re:")), **common)
            rounder.quantize()
            rounder.save_quantized(str(out_dir), format="llm_compressor")
        preprocessor.save_pretrained(out_dir)
        return {"engine": "auto-round AutoScheme", "format": self.output_format, "peak_gpu_mb": peak_gpu_mb(),
                "device": device, "compute_dtype": "bfloat16", "target_avg_bits": options.avg_bits,
                **chosen_schemes(out_dir, settings.group_size)}

    def effective_bits(self, settings, record):
        counted = record.get("bits_per_weight") if record is not None else None
        return (float(counted), "counted") if counted is not None else super().effective_bits(settings, record)

    def card_facts(self, settings: "Settings") -> CardFacts:
        options = self.options(settings)
        low = min(options.candidates)
        serve = ("Serve it with vLLM (compressed-tensors, one config group per scheme):\n\n```bash\n"
                 "vllm serve {repo_id}\n```" if low >= 4 else
                 f"vLLM has no kernel for the {low}-bit layers of this build; use transformers.")
        how = "RTN onto each layer's chosen grid" if options.iters == 0 else f"AutoRound, {options.iters} steps per block"
        return CardFacts(
            engine=f"auto-round AutoScheme (target {options.avg_bits:g} bits per weight; candidates "
                   f"{', '.join(f'W{b}A16' for b in sorted(options.candidates))}, group size {settings.group_size}), then {how}",
            format="compressed-tensors",
            tags=("compressed-tensors", "auto-round", "mixed-precision"),
            load_note="Loading needs `compressed-tensors` (`pip install compressed-tensors`); transformers "
                      "decompresses the weights to 16 bits when it loads them on a CPU.",
            serve_note=serve,
            weights_part="parts/weights-layer-groups.md.j2",
        )


def chosen_schemes(out_dir: Path, group_size: int) -> dict:
    """What the saved checkpoint gives each layer (its quantization_config's groups) and the bits per weight
    its tensors store (packed weights, scales and any zero points, over the quantized layers' weights)."""
    from auto_round.utils import compress_layer_names
    from safetensors import safe_open

    config = json.loads((out_dir / "config.json").read_text())["quantization_config"]
    layer_bits: dict[str, int] = {}
    for group in config["config_groups"].values():
        for target in group["targets"]:
            layer_bits[target] = group["weights"]["num_bits"]
    stored = weights = 0
    shapes: dict[str, int] = {}
    for path in sorted(out_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                layer, _, part = key.rpartition(".")
                if layer not in layer_bits:
                    continue
                tensor = f.get_tensor(key)
                if part == "weight_shape":
                    shapes[layer] = int(tensor[0]) * int(tensor[1])
                elif part.startswith("weight_"):
                    stored += tensor.numel() * tensor.element_size() * 8
    weights = sum(shapes.values())
    rows = []
    for bits in sorted(set(layer_bits.values())):
        names = [n for n, b in layer_bits.items() if b == bits]
        rows.append({"targets": [compress_layer_names(names)], "scheme": f"W{bits}A16"
                     + ("" if group_size == PER_CHANNEL else f"-g{group_size}"), "layers": len(names),
                     "weights": sum(shapes.get(n, 0) for n in names)})
    return {"layer_groups": rows, "layer_schemes": dict(sorted(layer_bits.items())),
            "bits_per_weight": round(stored / weights, 3) if weights else None,
            "auto_round_avg_bits": round(sum(shapes[n] * auto_round_bits(b, group_size) for n, b in layer_bits.items()
                                             if n in shapes) / weights, 3) if weights else None}
