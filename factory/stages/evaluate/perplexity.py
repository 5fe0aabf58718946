"""Perplexity measured the way Huang et al.'s code (after GPTQ's) measures it.

The text is tokenized once and cut into non-overlapping windows of `seq_len` tokens (the
tail shorter than a window is dropped); each window's mean next-token loss is scaled by
`seq_len`, and perplexity is exp(total / (windows * seq_len)).

Datasets, as the paper's code builds them: WikiText2 test joined with "\\n\\n"; C4: 256 random
`seq_len` windows of `en/c4-validation.00000-of-00008`, seed 0; PTB validation sentences joined
with " ". `demo` is the held-out text bundled with the factory (offline smoke figure).
"""

from __future__ import annotations

import math
import random

from factory.core.errors import UserError
from factory.core.paths import DATA_DIR

DEMO_HELDOUT = DATA_DIR / "demo_heldout.txt"
C4_WINDOWS = 256


def perplexity(model, token_ids, seq_len: int = 2048) -> float:
    import torch  # here, not at import: `factory plan` imports this package and must stay fast

    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    windows = ids.numel() // seq_len
    if windows == 0:
        raise ValueError(f"perplexity needs at least {seq_len} tokens, got {ids.numel()}")
    device = next(model.parameters()).device
    total = 0.0
    with torch.no_grad():
        for i in range(windows):
            batch = ids[i * seq_len:(i + 1) * seq_len].to(device).unsqueeze(0)
            logits = model(input_ids=batch).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], batch[0, 1:])
            total += loss.item() * seq_len
    return math.exp(total / (windows * seq_len))


def dataset_tokens(name: str, tokenizer, seq_len: int) -> list[int]:
    """The token stream the paper's code evaluates for `name`."""
    if name == "demo":
        return tokenizer(DEMO_HELDOUT.read_text(encoding="utf-8"))["input_ids"]
    if name == "wikitext2":
        rows = _load("wikitext2", "Salesforce/wikitext", "wikitext-2-raw-v1", split="test")
        return tokenizer("\n\n".join(rows["text"]))["input_ids"]
    if name == "ptb":
        rows = _load("ptb", "ptb-text-only/ptb_text_only", "penn_treebank", split="validation")
        return tokenizer(" ".join(rows["sentence"]))["input_ids"]
    if name == "c4":
        rows = _load("c4", "allenai/c4", None, split="validation",
                     data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"})
        rng = random.Random(0)
        ids: list[int] = []
        for _ in range(C4_WINDOWS):
            while True:  # a random document longer than one window, then a random window of it
                doc = tokenizer(rows[rng.randint(0, len(rows) - 1)]["text"])["input_ids"]
                if len(doc) > seq_len:
                    break
            start = rng.randint(0, len(doc) - seq_len - 1)
            ids.extend(doc[start:start + seq_len])
        return ids
    raise ValueError(f"unknown perplexity dataset {name}")


def _load(name: str, path: str, config: str | None, **kwargs):
    try:
        from datasets import load_dataset

        return load_dataset(path, config, **kwargs)
    except Exception as exc:  # offline, gated, renamed: all mean "not available here"
        raise UserError(f"evaluation.perplexity: dataset {name} ({path}) is not available "
                        f"({type(exc).__name__}); offline, use the smoke suite") from None
