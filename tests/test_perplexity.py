"""The paper-style perplexity against a hand computation on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from factory.stages.evaluate.perplexity import perplexity


def test_matches_a_hand_computation(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    torch.manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (3 * 32 + 5,))  # 3 windows; the 5-token tail is dropped
    by_hand = []
    with torch.no_grad():
        for w in range(3):
            window = ids[w * 32:(w + 1) * 32]
            logp = torch.log_softmax(model(input_ids=window[None]).logits[0].float(), -1)
            by_hand += [-logp[t, window[t + 1]].item() for t in range(31)]
    # per window: mean over its 31 predictions, weighted by 32 (as the paper's code does)
    means = [sum(by_hand[w * 31:(w + 1) * 31]) / 31 for w in range(3)]
    expected = math.exp(sum(m * 32 for m in means) / (3 * 32))
    assert perplexity(model, ids, seq_len=32) == pytest.approx(expected, rel=1e-5)


def test_too_short_text_is_an_error(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with pytest.raises(ValueError, match="at least 32 tokens"):
        perplexity(model, list(range(10)), seq_len=32)
