"""Methods the factory implements itself (factory/engines/lowbit/), written back as simulated quantization.

No maintained library or runtime kernel exists for PB-LLM, BiLLM or SliM-LLM, so, as in their
papers and the paper's released checkpoints, the output holds the dequantized weights in the
checkpoint's dtype at full size: it shows the quality of the method, not its memory saving.
The model is calibrated decoder layer by decoder layer (factory.engines.lowbit.quantize_model_layers).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from factory.engines.calibration import calibration_windows
from factory.engines.loading import (checkpoint_dtype, compute_dtype, load_preprocessor, model_class, peak_gpu_mb,
                                     reset_gpu_peak, text_tokenizer)
from factory.methods.base import CardFacts, QuantMethod, simulated_note

if TYPE_CHECKING:
    from factory.recipe import Settings

def skip_patterns(settings: "Settings") -> list[str]:
    """The recipe's `ignore` entries as regular expressions over full module names ("lm_head" lies
    outside the decoder layers and is never a target anyway)."""
    return [p.removeprefix("re:") if p.startswith("re:") else rf"(^|\.){p}$" for p in settings.ignore]


class SimulatedMethod(QuantMethod):
    output_format = "simulated"
    simulated = True
    needs_calibration = True
    runtimes = ("transformers",)
    fixed_group_size = (128, "the paper's setting: blocks of 128 columns")
    default_symmetric = None
    # Our own numerical code shapes the weights: the layer-by-layer driver and the shared GPTQ loop,
    # plus each method's own engine module (a subclass adds it). A new module under factory/engines/lowbit/
    # changes no other method's fingerprint.
    engine_modules: tuple[str, ...] = ("factory.engines.lowbit", "factory.engines.lowbit.hessian")

    def console_note(self) -> str | None:
        return simulated_note(self.name)

    def weight_quantizer(self, settings: "Settings"):
        """(weight, hessian) -> factory.engines.lowbit QuantResult, with the recipe's options bound."""
        raise NotImplementedError

    def manifest_figures(self, linears) -> dict:
        """Method-specific figures for the manifest from the per-linear reports (factory.engines.lowbit.LinearReport)."""
        return {}

    def quantize(self, base_dir: Path, settings: "Settings", out_dir: Path, recipe_dir: Path) -> dict:
        import torch

        from factory.engines.lowbit import (quantize_model_layers,  # loads torch; methods import without it
                                            weighted_bits)

        preprocessor = load_preprocessor(settings.kind, base_dir)
        windows = calibration_windows(settings.calibration, text_tokenizer(preprocessor), recipe_dir)
        reset_gpu_peak()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = compute_dtype()
        model = model_class(settings.kind).from_pretrained(
            base_dir, dtype=torch.float32 if dtype == "float32" else checkpoint_dtype(base_dir)).to(device)
        batches = [torch.tensor([w]) for w in windows]
        reports = quantize_model_layers(model, batches, self.weight_quantizer(settings), skip=skip_patterns(settings))
        linears = [linear for report in reports for linear in report.linears]
        model.to(checkpoint_dtype(base_dir))
        model.save_pretrained(out_dir)
        preprocessor.save_pretrained(out_dir)
        return {"engine": "factory.engines.lowbit", "format": self.output_format, "peak_gpu_mb": peak_gpu_mb(),
                "device": device, "compute_dtype": dtype, "quantized_linears": len(linears),
                "effective_bits": round(weighted_bits(linears, "effective_bits"), 4),
                "paper_bits": round(weighted_bits(linears, "paper_bits"), 4), **self.manifest_figures(linears)}

    def card_facts(self, settings: "Settings") -> CardFacts:
        return CardFacts(
            engine="the factory's own implementation (factory/engines/lowbit), written from the paper",
            format="simulated: dequantized weights at full size (no memory saving)",
            tags=("simulated-quantization",),
            load_note="A plain transformers checkpoint: the weights take only the values the method allows, "
                      "but are stored at full size (simulated quantization, as the paper evaluates it); no "
                      "runtime packs this format.",
            serve_note="",
            notice_part="parts/notice-simulated.md.j2",
        )
