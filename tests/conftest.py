"""Shared fixtures: offline environment, tiny random Llama and LLaVA-Next checkpoints built from configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Offline, as CI and the demo are; set before transformers / huggingface_hub are imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")
os.environ.setdefault("LOGURU_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs two pytest-xdist workers on 2 cores: one torch thread each (and in the processes they
# start), since two processes of two OpenMP threads each spin against each other and run several times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "factory" / "data"


def pytest_collection_modifyitems(config, items):
    """Import and lock checks first: a broken environment fails in seconds, not after a model run. Then
    the longest file (the real-model builds), so that under pytest-xdist one worker starts on it at once
    while the other takes the rest, instead of it starting last and running alone."""
    order = {"test_imports.py": 0, "test_locks.py": 0, "test_smollm2_ordering.py": 1}
    items.sort(key=lambda item: order.get(item.path.name, 2))
    # The GPU tier (tests marked `gpu`, bench/gpu_check.sh) needs a CUDA device; without one it is skipped.
    gpu_tests = [item for item in items if "gpu" in item.keywords]
    if gpu_tests:
        import torch

        if not torch.cuda.is_available():
            skip = pytest.mark.skip(reason="GPU tier: no CUDA device here")
            for item in gpu_tests:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def factory_cache(tmp_path_factory) -> Path:
    """One converted SmolLM2 per test session, unless the caller shares a cache."""
    cache = os.environ.get("FACTORY_TEST_CACHE") or str(tmp_path_factory.mktemp("factory-cache"))
    os.environ["FACTORY_CACHE"] = cache
    return Path(cache)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer trained in a second on the bundled demo text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<s>", "</s>", "<image>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(DATA / "demo_calibration.txt")], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _tiny_llama_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 2-layer random LlamaForCausalLM (hidden 64) with a real tokenizer, saved in bf16."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    model = LlamaForCausalLM(_tiny_llama_config(len(tiny_tokenizer))).to(torch.bfloat16)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny random LlavaNextForConditionalGeneration with a PIL image processor (no torchvision)."""
    import torch
    from transformers import (CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessorPil, LlavaNextProcessor)

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llava")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=28, patch_size=14, projection_dim=32)
    image_token = tiny_tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaNextConfig(vision_config=vision, text_config=_tiny_llama_config(len(tiny_tokenizer)),
                             image_token_index=image_token, image_grid_pinpoints=[[28, 28], [28, 56]],
                             vision_feature_layer=-1)
    model = LlavaNextForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(path)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                                 image_grid_pinpoints=[[28, 28], [28, 56]])
    LlavaNextProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer, patch_size=14,
                       vision_feature_select_strategy="default").save_pretrained(path)
    return path


def write_recipe(directory: Path, body: str, name: str = "recipe.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def local_model_recipe(directory: Path, name: str, body: str, model_dir: Path, kind: str = "causal-lm") -> Path:
    """A recipe `name` with `body` (method, weights, ...) over one local checkpoint, written as NAME.yaml."""
    return write_recipe(directory, f"name: {name}\n{body}\nmodels:\n"
                        f"  - {{id: test/tiny, source: local, path: {model_dir}, kind: {kind}}}\n", f"{name}.yaml")


def run_factory(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 900):
    """The CLI in a fresh process, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "factory.cli", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


RELOAD_SCRIPT = """
import json, sys, torch
from transformers import AutoModelForCausalLM, LlavaNextForConditionalGeneration
kind, path = sys.argv[1], sys.argv[2]
cls = LlavaNextForConditionalGeneration if kind == "llava-next" else AutoModelForCausalLM
model = cls.from_pretrained(path)
ids = torch.arange(1, 33).unsqueeze(0)
with torch.no_grad():
    logits = model(input_ids=ids).logits.float()
print(json.dumps({"factory_imported": any(m == "factory" or m.startswith("factory.") for m in sys.modules),
                  "finite": bool(torch.isfinite(logits).all()), "shape": list(logits.shape),
                  "quant_method": (getattr(model.config, "quantization_config", None) or {}).get("quant_method")
                  if isinstance(getattr(model.config, "quantization_config", None), dict)
                  else getattr(getattr(model.config, "quantization_config", None), "quant_method", None)}, default=str))
"""


def reload_in_fresh_process(kind: str, path: Path) -> dict:
    """Load a checkpoint with plain transformers in a process that never imports the factory."""
    done = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, kind, str(path)], cwd="/", capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the Hub (tests/hub_server.py)


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """A Hub-compatible server on 127.0.0.1 for the whole session; CLI runs reach it via hub.client_env()."""
    from hub_server import FakeHub

    with FakeHub(tmp_path_factory.mktemp("fake-hub")) as server:
        yield server


PUBLISHED_RECIPE = """
name: rtn-4bit
method: rtn
weights: {{bits: 4, group_size: 32}}
evaluation: {{suite: smoke, limit: 4, perplexity_seq_len: 64, batch_size: 4}}
publish: {{org: tester}}
models: [{{id: test/tiny, source: local, path: {model}, license: mit}}]
"""


@pytest.fixture(scope="session")
def evaluated_build(tmp_path_factory, tiny_llama):
    """One quantized and evaluated tiny build (workdir, recipe file), ready for card and push."""
    from factory.pipeline.build import Build
    from factory.recipe import load_recipe
    from factory.stages.artifact import quantize
    from factory.stages.evaluate import evaluate

    work = tmp_path_factory.mktemp("published")
    recipe_path = write_recipe(work, PUBLISHED_RECIPE.format(model=tiny_llama), "rtn-4bit.yaml")
    recipe = load_recipe(recipe_path)
    build = Build(recipe, recipe.models[0], work)
    quantize(build)
    evaluate(build, log=lambda line: None)
    return work, recipe_path
