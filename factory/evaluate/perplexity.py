"""Perplexity measured the way Huang et al.'s code (after GPTQ's) measures it.

The text is tokenized once and cut into non-overlapping windows of `seq_len` tokens (the
tail shorter than a window is dropped); each window's mean next-token loss is scaled by
`seq_len`, and perplexity is exp(total / (windows * seq_len)).
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def perplexity(model, token_ids: list[int] | torch.Tensor, seq_len: int = 2048) -> float:
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    windows = ids.numel() // seq_len
    if windows == 0:
        raise ValueError(f"perplexity needs at least {seq_len} tokens, got {ids.numel()}")
    device = next(model.parameters()).device
    total = 0.0
    for i in range(windows):
        batch = ids[i * seq_len:(i + 1) * seq_len].to(device).unsqueeze(0)
        logits = model(input_ids=batch).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], batch[0, 1:])
        total += loss.item() * seq_len
    return math.exp(total / (windows * seq_len))
