"""The tokenizer metadata of the factory's GGUF files (factory/methods/gguf.py says why), written
while auto-round's export runs llama.cpp's converter. Its code enters GGUF builds' fingerprints."""

from __future__ import annotations

import contextlib
from pathlib import Path

from factory.core.errors import UserError
from factory.engines.base_models import gguf_origin


@contextlib.contextmanager
def llama_cpp_vocab(base_dir: Path):
    """While auto-round exports `base_dir`, write the tokenizer as factory/methods/gguf.py describes."""
    from auto_round.export.export_to_gguf.llama_cpp_conversion import get_conversion

    conversion = get_conversion(base_dir)
    hparams = conversion.ModelBase.load_hparams(Path(base_dir), False)
    architecture = conversion.get_model_architecture(hparams, conversion.ModelType.TEXT)
    cls = conversion.get_model_class(architecture)
    origin = gguf_origin(base_dir)
    saved = {name: cls.__dict__[name] for name in ("set_vocab", "_create_vocab_sentencepiece") if name in cls.__dict__}
    original_set_vocab = cls.set_vocab

    def set_vocab(self):
        if origin is not None:
            copy_tokenizer_metadata(origin, self.gguf_writer, self.hparams.get("vocab_size"))
        else:
            original_set_vocab(self)

    def create_vocab_sentencepiece(self):
        if (Path(self.dir_model) / "tokenizer.model").is_file():
            raise UserError(f"{base_dir}: the tokenizer is SentencePiece (tokenizer.model); writing it to GGUF "
                            "needs the sentencepiece package, which the factory does not install")
        raise FileNotFoundError("tokenizer.model")  # what llama.cpp raises without the file: it goes on to BPE

    cls.set_vocab = set_vocab
    cls._create_vocab_sentencepiece = create_vocab_sentencepiece
    try:
        yield
    except NotImplementedError as exc:
        if "pre-tokenizer" in str(exc):
            raise UserError(f"{base_dir}: llama.cpp does not know this tokenizer's pre-tokenizer (its converter's "
                            "hash table has no entry for it), so no GGUF could name it") from None
        raise
    finally:
        for name in ("set_vocab", "_create_vocab_sentencepiece"):
            if name in saved:
                setattr(cls, name, saved[name])
            else:
                delattr(cls, name)


def copy_tokenizer_metadata(source: Path, writer, vocab_size: int | None) -> None:
    """Every `tokenizer.*` key of the GGUF `source`, with its GGUF types, into `writer`."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(source)
    fields = {name: f for name, f in reader.fields.items() if name.startswith("tokenizer.")}
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise RuntimeError(f"{source.name} has no tokenizer")
    if vocab_size is not None and len(tokens.data) != vocab_size:
        raise RuntimeError(f"{source.name} has {len(tokens.data)} tokens, the model {vocab_size}")
    for name, field in fields.items():
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub_type)


def field_value(reader, name: str):
    """A GGUF metadata value (GGUFReader), or None where the file has no such key."""
    field = reader.fields.get(name)
    return field.contents() if field is not None else None


def check_tokenizer(gguf_path: Path, base_dir: Path) -> dict:
    """The GGUF's tokenizer reproduces the base's: the same token strings by id, the same BPE merges in
    order and the same BOS/EOS ids. With those equal, llama.cpp tokenizes the file as the base does, its
    pre-tokenizer regex being the one its converter named (`tokenizer.ggml.pre`, from the hash of the
    base tokenizer's own output). Checked here because transformers' GGUF tokenizer reader is not exact
    for every type: for LLaMA-3's it applies GPT-2's split regex (numbers are not cut into 1-3 digits)
    and takes the BOS as EOS, so its ids are not llama.cpp's. Raises RuntimeError naming the first
    difference; returns what was compared."""
    import json

    from gguf import GGUFReader
    from transformers import AutoTokenizer

    reader = GGUFReader(gguf_path)

    def value(name: str):
        return field_value(reader, name)

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokens = value("tokenizer.ggml.tokens") or []
    base_tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if len(tokens) < len(base_tokens):
        raise RuntimeError(f"the GGUF has {len(tokens)} tokens, the base tokenizer {len(base_tokens)}")
    for i, (mine, theirs) in enumerate(zip(tokens, base_tokens)):
        if mine != theirs:
            raise RuntimeError(f"the GGUF's token {i} is {mine!r}, the base tokenizer's {theirs!r}")
    model = json.loads((Path(base_dir) / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    base_merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    merges = value("tokenizer.ggml.merges") or []
    if merges != base_merges:
        first = next((i for i, (a, b) in enumerate(zip(merges, base_merges)) if a != b), min(len(merges), len(base_merges)))
        raise RuntimeError(f"the GGUF's BPE merges differ from the base tokenizer's from merge {first} "
                           f"({len(merges)} against {len(base_merges)})")
    special = {}
    for role in ("bos", "eos"):
        mine, theirs = value(f"tokenizer.ggml.{role}_token_id"), getattr(tokenizer, f"{role}_token_id")
        if theirs is not None and mine != theirs:
            raise RuntimeError(f"the GGUF's {role.upper()} id is {mine}, the base tokenizer's {theirs}")
        special[role] = mine
    return {"tokens": len(tokens), "merges": len(merges), "special_ids": special,
            "pre_tokenizer": value("tokenizer.ggml.pre"), "model": value("tokenizer.ggml.model")}
