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

from factory.core.atomic import atomic_dir
from factory.core.code_digest import code_digest
from factory.pipeline.fingerprint import digest, library_versions
from factory.engines.base_models import fetch_base, slug, source_revision
from factory.core.paths import cache_root

FILE_TYPE = "F16"
FILE_NAME = f"model-{FILE_TYPE}.gguf"
CONVERTER_LIBRARIES = ("auto-round", "gguf")


def identity(entry, recipe_dir: Path) -> dict:
    return {"model": entry.id, "revision": source_revision(entry, recipe_dir), "file_type": FILE_TYPE,
            "libraries": library_versions(CONVERTER_LIBRARIES),
            "tokenizer_code": code_digest(["factory.engines.gguf_vocab"])}


def base_gguf(entry, recipe_dir: Path, log=print) -> Path:
    """The cached F16 GGUF of `entry`'s base checkpoint, written first if this machine has none."""
    from filelock import FileLock

    from factory.methods.gguf import write_unquantized

    ident = identity(entry, recipe_dir)
    target = cache_root() / "base-gguf" / slug(entry.id) / digest(ident)
    if (target / FILE_NAME).is_file():
        return target / FILE_NAME
    locks = cache_root() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"base-gguf-{target.parent.name}-{target.name}.lock")):
        if (target / FILE_NAME).is_file():
            return target / FILE_NAME
        log(f"  speed: writing the base model as an {FILE_TYPE} GGUF once (cached in {target})")
        base = fetch_base(entry, recipe_dir)
        try:
            with atomic_dir(target, owned=True) as partial:
                write_unquantized(base.path, partial / FILE_NAME, FILE_TYPE)
                (partial / "identity.json").write_text(json.dumps(ident, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            raise RuntimeError(f"could not write the base model's {FILE_TYPE} GGUF in {target.parent}: "
                               f"{exc.strerror or exc}") from None
        except (RuntimeError, ValueError, NotImplementedError, KeyError) as exc:
            raise RuntimeError(f"llama.cpp's converter could not write the base model's {FILE_TYPE} GGUF: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
        return target / FILE_NAME
