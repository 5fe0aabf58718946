"""Methods run through llm-compressor's `oneshot` and saved as compressed-tensors.

The model is loaded on the CPU; llm-compressor's sequential pipeline then onloads one decoder
layer at a time to the accelerator (when there is one), so LLaMA-3-70B calibrates on one 80 GB
GPU. The output is compressed-tensors (packed int weights in safetensors), which transformers
and vLLM load.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from factory.engines.calibration import calibration_windows
from factory.engines.loading import (checkpoint_dtype, compute_dtype, load_preprocessor, model_class, peak_gpu_mb,
                                     reset_gpu_peak, text_tokenizer)
from factory.methods.base import PER_CHANNEL, CardFacts, QuantMethod

if TYPE_CHECKING:
    from factory.recipe import Settings


class LLMCompressorMethod(QuantMethod):
    output_format = "compressed-tensors"
    libraries = ("llmcompressor", "compressed-tensors")
    runtimes = ("transformers", "vllm")
    serving = "vLLM, 4- and 8-bit integer builds (Marlin and int8 kernels, compute capability >= 8.0)"
    # vLLM's compressed-tensors kernels the card points to (4- and 8-bit weights)
    vllm_bits = (4, 8)
    load_dtype: str | None = None  # a dtype the method needs (else compute_dtype(): the checkpoint's, or float32 on CPU)

    def modifiers(self, settings: "Settings", quant: dict) -> list:
        """The llm-compressor recipe; `quant` holds config_groups and ignore for the quantization modifier."""
        raise NotImplementedError

    def quantization_scheme(self, settings: "Settings") -> dict:
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

        grouped = settings.group_size != PER_CHANNEL
        weights = QuantizationArgs(
            num_bits=settings.bits, type="int", symmetric=settings.symmetric,
            strategy="group" if grouped else "channel", group_size=settings.group_size if grouped else None,
        )
        activations = None
        if settings.activation_bits:
            activations = QuantizationArgs(num_bits=settings.activation_bits, type="int", symmetric=True,
                                           strategy="token", dynamic=True)
        scheme = {"group_0": QuantizationScheme(targets=["Linear"], weights=weights, input_activations=activations)}
        return dict(config_groups=scheme, ignore=settings.ignore)

    def quantize(self, base_dir: Path, settings: "Settings", out_dir: Path, recipe_dir: Path) -> dict:
        import torch
        from datasets import Dataset
        from llmcompressor import oneshot

        preprocessor = load_preprocessor(settings.kind, base_dir)
        kwargs = {}
        if settings.calibration is not None:
            cal = settings.calibration
            windows = calibration_windows(cal, text_tokenizer(preprocessor), recipe_dir)
            dataset = Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * len(w) for w in windows]})
            kwargs = dict(dataset=dataset, num_calibration_samples=len(dataset), max_seq_length=cal.seq_len,
                          shuffle_calibration_samples=False)

        reset_gpu_peak()
        cls = model_class(settings.kind)
        dtype = self.load_dtype or compute_dtype()
        model = cls.from_pretrained(base_dir, dtype=dtype)
        with _no_pinned_memory_without_accelerator():
            oneshot(model=model, recipe=self.modifiers(settings, self.quantization_scheme(settings)), **kwargs)
        if dtype == "float32":  # computed in float32 on this CPU: saved in the checkpoint's own dtype
            model.to(checkpoint_dtype(base_dir))
        model.save_pretrained(out_dir, save_compressed=True)
        preprocessor.save_pretrained(out_dir)
        _keep_ignore_patterns(out_dir / "config.json", settings.ignore)
        return {"engine": "llm-compressor", "format": self.output_format, "peak_gpu_mb": peak_gpu_mb(),
                "device": "cuda" if torch.cuda.is_available() else "cpu", "compute_dtype": dtype}

    def quantize_model_free(self, base_dir: Path, settings: "Settings", out_dir: Path) -> dict:
        """The same scheme through llm-compressor's `model_free_ptq`: safetensors shard by shard, no model built,
        so a data-free build needs about one shard of memory instead of the whole model."""
        import torch
        from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus
        from llmcompressor.entrypoints.model_free import model_free_ptq

        quant = self.quantization_scheme(settings)
        reset_gpu_peak()
        # Without a model there are no module types: every 2-D `.weight` is a candidate, so the token
        # embedding (tied to lm_head in SmolLM2 and LLaMA-3.2) is kept out as `oneshot` keeps it out.
        # A config (not a bare scheme) keeps oneshot's group names (group_0) in the saved quantization_config.
        config = QuantizationConfig(config_groups=quant["config_groups"], ignore=model_free_ignore(quant["ignore"]),
                                    quantization_status=QuantizationStatus.INITIALIZED)
        model_free_ptq(str(base_dir), str(out_dir), config=config, max_workers=1,
                       device="cuda:0" if torch.cuda.is_available() else "cpu")
        return {"engine": "llm-compressor model_free_ptq", "format": self.output_format, "peak_gpu_mb": peak_gpu_mb(),
                "device": "cuda" if torch.cuda.is_available() else "cpu", "compute_dtype": str(checkpoint_dtype(base_dir)).removeprefix("torch."),
                "model_free": True}

    def card_facts(self, settings: "Settings") -> CardFacts:
        if settings.bits in self.vllm_bits:
            serve = f"Serve it with vLLM:\n\n```bash\nvllm serve {{repo_id}}\n```"
        else:
            serve = f"vLLM has no kernel for {settings.bits}-bit compressed-tensors weights; use transformers."
        return CardFacts(
            engine="llm-compressor `oneshot`",
            format="compressed-tensors",
            tags=("compressed-tensors", "llm-compressor"),
            load_note="Loading needs `compressed-tensors` (installed with llm-compressor, or "
                      "`pip install compressed-tensors`).",
            serve_note=serve,
        )


def model_free_ignore(ignore: list[str]) -> list[str]:
    """The recipe's ignore list for `model_free_ptq`, which matches the checkpoint's tensor names, not a loaded
    model's module names: an exact name also matches under a prefix (LLaVA-Next's checkpoint keeps its LM head as
    `language_model.lm_head`, which `lm_head` alone does not match), and the token embedding is kept out."""
    import re

    prefixed = [f"re:(.*\\.)?{re.escape(name)}$" for name in ignore if not name.startswith("re:")]
    return [*ignore, *prefixed, "re:.*embed_tokens$"]


def _keep_ignore_patterns(config_path: Path, ignore: list[str]) -> None:
    """Put the recipe's own ignore patterns back into the saved quantization_config.

    llm-compressor expands `ignore` into module names as the loaded model names them
    (`model.vision_tower...`), while transformers 5 saves LLaVA-Next under its original
    checkpoint names (`vision_tower...`). Reloaded, the vision tower then no longer matches
    `ignore` and is treated as quantized (llm-compressor issues #3159, #2641). The patterns
    match under either naming, for transformers and vLLM alike.
    """
    config = json.loads(config_path.read_text())
    quant = config["quantization_config"]
    quant["ignore"] = list(quant.get("ignore") or []) + [p for p in ignore if p not in (quant.get("ignore") or [])]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def _no_pinned_memory_without_accelerator():
    """Work around llm-compressor 0.14 AWQ on machines with no accelerator.

    AWQ pins its cached activations (IntermediatesCache.pin_memory) for faster host-to-device
    copies; with no accelerator, torch's pin_memory raises "Cannot access accelerator device
    when none is available". Pinning only speeds up copies that never happen there, so it is
    skipped then, and only then.
    """
    import torch

    if torch.accelerator.is_available():
        yield
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original
