"""Runner labels from a model's size (factory.fleet.runners): the tiers, their JSON, the sizes."""

from __future__ import annotations

import pytest

from factory.core.errors import UserError
from factory.fleet.runners import params_from_config, params_from_id, runner_for, tiers

LLAMA3_70B = dict(hidden_size=8192, num_hidden_layers=80, intermediate_size=28672, vocab_size=128256,
                  num_attention_heads=64, num_key_value_heads=8)
LLAMA3_8B = dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, vocab_size=128256,
                 num_attention_heads=32, num_key_value_heads=8)


def test_sizes_from_config_and_from_id():
    assert params_from_config(LLAMA3_70B) == pytest.approx(70.55, abs=0.01)
    assert params_from_config(LLAMA3_8B) == pytest.approx(8.03, abs=0.01)
    assert params_from_config({"text_config": LLAMA3_8B}) == pytest.approx(8.03, abs=0.01)  # LLaVA-Next
    assert params_from_config({"hidden_size": 64}) is None
    assert params_from_id("meta-llama/Meta-Llama-3-70B") == 70
    assert params_from_id("llava-hf/llama3-llava-next-8b-hf") == 8
    assert params_from_id("HuggingFaceTB/SmolLM2-135M-Instruct") == pytest.approx(0.135)
    assert params_from_id("test/tiny") is None


def test_default_tiers_put_8b_on_one_gpu_and_70b_on_the_multi_gpu_runner():
    available = tiers("")
    assert runner_for(8.03, available)[0] == "gpu-80gb"
    name, tier = runner_for(70.55, available)
    assert name == "multi-gpu" and "high-ram" in tier.labels
    assert runner_for(None, available)[0] == "multi-gpu"  # unknown size: the largest


def test_tiers_from_a_variable_are_ordered_and_checked():
    text = ('{"big": {"up_to_b": null, "labels": ["h100x8"]}, "cpu": {"up_to_b": 1, "labels": ["cpu"]},'
            ' "one": {"up_to_b": 20, "labels": ["h100"]}}')
    available = tiers(text)
    assert list(available) == ["cpu", "one", "big"]
    assert runner_for(0.135, available)[1].labels == ["cpu"]
    with pytest.raises(UserError, match="not valid JSON"):
        tiers("{oops")
    with pytest.raises(UserError, match="labels"):
        tiers('{"one": {"up_to_b": 20, "labels": []}}')
    with pytest.raises(UserError, match="up_to_b"):
        tiers('{"one": {"up_to_b": "20", "labels": ["x"]}}')
    with pytest.raises(UserError, match="no tier holds a 70.0B model"):
        runner_for(70.0, tiers('{"one": {"up_to_b": 20, "labels": ["x"]}}'))
    with pytest.raises(UserError, match="names no tier"):
        tiers("{}")
