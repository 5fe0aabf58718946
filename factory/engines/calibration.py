"""Calibration data the way the paper's code draws it: random token windows of one long text.

Huang et al. (and GPTQ's reference code) join the WikiText2 train split with "\\n\\n", tokenize
it once, and draw `samples` windows of `seq_len` tokens at random start positions with a
fixed seed. A local .txt/.md file, a .jsonl file (one `text_field` per line) or the demo text
shipped with the factory are drawn from the same way.

`cal` is a recipe's calibration block (factory.recipe.Calibration; the engines do not import the
recipe layer above them): .source, .path, .text_field, .samples, .seq_len and .seed are read.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from factory.core.errors import UserError
from factory.core.paths import DATA_DIR

DEMO_TEXT = "demo_calibration.txt"


def calibration_text(cal: "Calibration", recipe_dir: Path) -> str:
    if cal.source == "demo":
        return (DATA_DIR / DEMO_TEXT).read_text(encoding="utf-8")
    if cal.source == "file":
        path = recipe_dir / (cal.path or "")
        if not path.is_file():
            raise UserError(f"calibration.path: no such file: {path}")
        if path.suffix == ".jsonl":
            return "\n\n".join(_jsonl_texts(path, cal.text_field))
        return path.read_text(encoding="utf-8", errors="replace")
    return _wikitext2_train()


def calibration_digest(cal: "Calibration", recipe_dir: Path) -> str | None:
    """Content hash of a local calibration text, so editing the text changes the fingerprint."""
    if cal.source == "wikitext2":
        return None  # a named, versioned dataset
    path = DATA_DIR / DEMO_TEXT if cal.source == "demo" else recipe_dir / (cal.path or "")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def calibration_windows(cal: "Calibration", tokenizer, recipe_dir: Path) -> list[list[int]]:
    """`cal.samples` windows of `cal.seq_len` token ids, drawn as the paper's get_wikitext2 does."""
    ids = tokenizer(calibration_text(cal, recipe_dir))["input_ids"]
    if len(ids) <= cal.seq_len:
        raise UserError(f"calibration: the text has {len(ids)} tokens, fewer than calibration.seq_len "
                        f"({cal.seq_len}); use a longer text or a shorter seq_len")
    rng = random.Random(cal.seed)
    windows = []
    for _ in range(cal.samples):
        start = rng.randint(0, len(ids) - cal.seq_len - 1)
        windows.append(list(ids[start:start + cal.seq_len]))
    return windows


def _jsonl_texts(path: Path, field: str) -> list[str]:
    texts = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{number}: not valid JSON") from None
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise UserError(f"{path}:{number}: no text field {field!r} (set calibration.text_field)")
            texts.append(row[field])
    return texts


def _wikitext2_train() -> str:
    try:
        from datasets import load_dataset

        data = load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="train")
    except Exception as exc:  # offline, no such dataset, hub errors: all mean "not reachable"
        raise UserError("calibration: WikiText2 could not be loaded from the Hub "
                        f"({type(exc).__name__}); offline, use calibration.source: file or demo") from None
    return "\n\n".join(data["text"])
