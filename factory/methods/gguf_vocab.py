"""The tokenizer metadata of the factory's GGUF files (factory/methods/gguf.py says why), written
while auto-round's export runs llama.cpp's converter. Its code enters GGUF builds' fingerprints."""

from __future__ import annotations

import contextlib
from pathlib import Path

from factory.errors import UserError


@contextlib.contextmanager
def llama_cpp_vocab(base_dir: Path):
    """While auto-round exports `base_dir`, write the tokenizer as factory/methods/gguf.py describes."""
    from auto_round.export.export_to_gguf.llama_cpp_conversion import get_conversion

    from factory.models import gguf_origin

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
