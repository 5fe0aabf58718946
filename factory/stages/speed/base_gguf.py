"""The base model as an F16 GGUF: what a GGUF build is timed and scored against in llama.cpp.

Written once per base identity (model, revision, the converter's versions and the factory's tokenizer
code) by the same llama.cpp converter that writes the builds (factory.methods.gguf.write_unquantized),
and cached in <FACTORY_CACHE>/base-gguf/<org>--<model>/<digest>/model-F16.gguf. The folder is written
aside and renamed into place under a file lock (factory.core.atomic), so a failed or killed conversion (a
full disk, a converter error) leaves nothing that a later run takes as complete.
"""

from __future__ import annotations

import json
from pathlib import Path

from factory.core.cache import made_once
from factory.core.code_digest import code_digest
from factory.core.paths import cache_root
from factory.engines.base_models import fetch_base, slug, source_revision
from factory.methods import gguf as gguf_method
from factory.pipeline.fingerprint import digest, library_versions

FILE_TYPE = "F16"
FILE_NAME = f"model-{FILE_TYPE}.gguf"
CONVERTER_LIBRARIES = ("auto-round", "gguf")


def identity(entry, recipe_dir: Path) -> dict:
    return {"model": entry.id, "revision": source_revision(entry, recipe_dir), "file_type": FILE_TYPE,
            "libraries": library_versions(CONVERTER_LIBRARIES),
            "tokenizer_code": code_digest(["factory.engines.gguf_vocab"])}


def base_gguf(entry, recipe_dir: Path, log=print) -> Path:
    """The cached F16 GGUF of `entry`'s base checkpoint, written first if this machine has none."""
    ident = identity(entry, recipe_dir)
    target = cache_root() / "base-gguf" / slug(entry.id) / digest(ident)

    def make(partial: Path) -> None:
        log(f"  speed: writing the base model as an {FILE_TYPE} GGUF once (cached in {target})")
        base = fetch_base(entry, recipe_dir)
        try:
            gguf_method.write_unquantized(base.path, partial / FILE_NAME, FILE_TYPE)  # the GGUF method's writer
            (partial / "identity.json").write_text(json.dumps(ident, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            raise RuntimeError(f"could not write the base model's {FILE_TYPE} GGUF in {target.parent}: "
                               f"{exc.strerror or exc}") from None
        except (RuntimeError, ValueError, NotImplementedError, KeyError) as exc:
            raise RuntimeError(f"llama.cpp's converter could not write the base model's {FILE_TYPE} GGUF: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None

    made_once("base-gguf", target, lambda t: (t / FILE_NAME).is_file(), make)
    return target / FILE_NAME
