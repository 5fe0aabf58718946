"""The speed stage (factory.stages.speed) on tiny random models, CPU and offline: the transformers runtime,
the base model's figures cached once per machine, the card's table, and the runtimes that are not
installed here refused in one line."""

from __future__ import annotations

import json

import pytest

from conftest import local_model_recipe, run_factory
from factory.pipeline.build import Build
from factory.recipe import load_recipe

SPEED = "  speed: {batch_sizes: [1, 2], prompt_tokens: 16, new_tokens: 4, runtime: %s}"
EVAL = "evaluation:\n  suite: smoke\n  tasks: []\n  perplexity: [demo]\n  perplexity_seq_len: 64\n" + SPEED
GPTQ = "method: gptq\nweights: {bits: 4, group_size: 32}\ncalibration: {source: demo, samples: 8, seq_len: 64}\n"


def _recipe(tmp_path, model, body=GPTQ, runtime="auto", name="gptq"):
    return local_model_recipe(tmp_path, name, body + EVAL % runtime, model)


def test_speed_measures_the_build_and_its_base_and_says_transformers_decompresses(tmp_path, tiny_llama):
    recipe = _recipe(tmp_path, tiny_llama)
    work = tmp_path / "work"
    assert run_factory("quantize", str(recipe), "--workdir", str(work)).returncode == 0
    done = run_factory("speed", str(recipe), "--workdir", str(work))
    assert done.returncode == 0, done.stderr
    assert "runtime transformers" in done.stdout and "decompresses" in done.stdout
    build = Build(load_recipe(recipe), load_recipe(recipe).models[0], work)
    figures = json.loads((build.stage_dir("speed") / "speed.json").read_text())
    assert figures["runtime"] == "transformers" and figures["device"].startswith("CPU")
    assert figures["base_source"] == "measured"
    for who in ("build", "base"):
        f = figures[who]
        assert [b["batch_size"] for b in f["batches"]] == [1, 2]
        assert all(b["prefill_tokens_per_s"] > 0 and b["decode_tokens_per_s"] > 0 for b in f["batches"])
        assert f["load_s"] > 0 and f["peak_rss_mb"] > f["rss_before_load_mb"] > 0
    # transformers 5.17 loads a compressed-tensors W4A16 checkpoint as dense Linear layers: the
    # weights take as much memory as the base model's (measured, not assumed)
    assert figures["build"]["quantized_checkpoint"] and figures["build"]["weights_in_memory"] == "dense"
    assert figures["build"]["weights_mb"] == pytest.approx(figures["base"]["weights_mb"], rel=0.02)
    assert "saves no memory" in figures["weights_note"] and "vLLM" in figures["weights_note"]

    # a second recipe for the same base model reuses the base figures of this machine
    other = _recipe(tmp_path, tiny_llama, body="method: rtn\nweights: {bits: 4, group_size: 32}\n", name="rtn")
    assert run_factory("quantize", str(other), "--workdir", str(work)).returncode == 0
    again = run_factory("speed", str(other), "--workdir", str(work))
    assert again.returncode == 0, again.stderr
    assert "reusing the base model's figures" in again.stdout
    other_build = Build(load_recipe(other), load_recipe(other).models[0], work)
    second = json.loads((other_build.stage_dir("speed") / "speed.json").read_text())
    assert second["base_source"] == "cache" and second["base"] == figures["base"]
    # and the same build is not measured twice
    assert "already measured" in run_factory("speed", str(recipe), "--workdir", str(work)).stdout


def test_bitsandbytes_stays_packed_in_transformers(tmp_path, tiny_llama):
    from factory.pipeline.artifact import Artifact
    from factory.stages.artifact import quantize
    from factory.stages.speed import run_measurement

    recipe = load_recipe(_recipe(tmp_path, tiny_llama, body="method: int8\nweights: {bits: 8}\n", name="int8"))
    build = Build(recipe, recipe.models[0], tmp_path / "work")
    try:
        quantize(build)
    except Exception as exc:  # bitsandbytes without its native library on this CPU
        pytest.skip(f"bitsandbytes cannot quantize here: {exc}")
    measured = run_measurement("transformers", "causal-lm", Artifact("checkpoint", build.model_dir),
                               recipe.evaluation.speed)
    assert measured["weights_in_memory"] == "packed"


def test_publish_puts_a_speed_table_in_the_card(tmp_path, tiny_llama):
    recipe = _recipe(tmp_path, tiny_llama)
    done = run_factory("publish", str(recipe), "--workdir", str(tmp_path / "work"), "--to", str(tmp_path / "hub"))
    assert done.returncode == 0, done.stderr
    card = next((tmp_path / "hub").rglob("README.md")).read_text()
    assert "## Speed and memory" in card and "Measured in **transformers** on CPU" in card
    assert "| this build | 1 |" in card and "| base model | 2 |" in card
    assert "decompresses" in card and "serves them packed" in card
    assert next((tmp_path / "hub").rglob("evaluation/speed.json")).is_file()
    assert "batch B" not in card and "F16 GGUF" not in card  # llama.cpp's sentences are its own card parts


def test_the_speed_section_takes_the_runtimes_own_sentences(tmp_path, tiny_llama):
    """The same figures rendered as llama.cpp's: its card parts (model_cards/parts/speed-llama.cpp-*) fill
    their places mid-sentence; the template names no runtime."""
    from factory.stages.card import render

    path = _recipe(tmp_path, tiny_llama)
    done = run_factory("publish", str(path), "--workdir", str(tmp_path / "work"), "--to", str(tmp_path / "hub"))
    assert done.returncode == 0, done.stderr
    recipe = load_recipe(path)
    build = Build(recipe, recipe.models[0], tmp_path / "work")
    scores = json.loads((build.stage_dir("evaluate") / "scores.json").read_text())
    speed = json.loads((build.stage_dir("speed") / "speed.json").read_text())
    card = render(build, "factory-test/tiny", scores, [], {**speed, "runtime": "llama.cpp"})
    assert "batch sizes 1, 2 (batch B: B sequences decoded at once in B slots of one llama.cpp server)" in card
    assert ("The base model is measured in llama.cpp too, as an F16 GGUF written by the same converter. Weights in "
            "memory is the GGUF file's size; Peak memory is") in card


@pytest.mark.parametrize("runtime", ["vllm"])  # llama.cpp (xllamacpp) is in the lock
def test_a_runtime_that_is_not_installed_is_one_line(tmp_path, tiny_llama, runtime):
    import importlib.util

    package = {"vllm": "vllm"}[runtime]
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    recipe = _recipe(tmp_path, tiny_llama, runtime=runtime)
    for command in ("publish", "speed"):
        args = [command, str(recipe), "--workdir", str(tmp_path / "work")]
        done = run_factory(*args, *(["--to", str(tmp_path / "hub")] if command == "publish" else []))
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{runtime} is not installed here" in lines[0], done.stderr
        assert not (tmp_path / "work" / "builds" / "gptq" / "test--tiny" / "model").exists()


def test_speed_settings_are_validated(tmp_path, tiny_llama):
    from factory.core.errors import RecipeInvalid

    body = GPTQ + "evaluation:\n  speed: {batch_sizes: [], new_tokens: 1, runtime: tensorrt}\n"
    with pytest.raises(RecipeInvalid) as caught:
        load_recipe(local_model_recipe(tmp_path, "bad", body, tiny_llama))
    text = str(caught.value)
    assert "evaluation.speed.batch_sizes" in text and "evaluation.speed.new_tokens" in text
    assert "evaluation.speed.runtime" in text


def test_auto_picks_llama_cpp_for_gguf_only_when_installed(tmp_path, monkeypatch):
    from factory.pipeline.artifact import Artifact
    from factory.recipe import Speed
    from factory.stages import speed

    (tmp_path / "model.Q4_K_M.gguf").write_bytes(b"GGUF")
    artifact = Artifact("checkpoint", tmp_path)
    monkeypatch.setattr(speed, "installed", lambda runtime: runtime == "llama.cpp")
    assert speed.resolve_runtime(Speed(), artifact) == "llama.cpp"
    monkeypatch.setattr(speed, "installed", lambda runtime: runtime == "transformers")
    assert speed.resolve_runtime(Speed(), artifact) == "transformers"
    monkeypatch.setattr(speed, "installed", lambda runtime: True)
    monkeypatch.setattr(speed, "cuda_available", lambda: False)
    with pytest.raises(speed.UserError, match="vllm needs a CUDA GPU"):
        speed.resolve_runtime(Speed(runtime="vllm"), artifact)
    with pytest.raises(speed.UserError, match="holds none"):
        speed.resolve_runtime(Speed(runtime="llama.cpp"), Artifact("checkpoint", tmp_path / "empty"))


def test_placement_fits_a_70b_evaluation_to_the_runner():
    from factory.stages.evaluate.placement import choose

    gb = 10**9
    dense_70b = 141 * gb  # LLaMA-3-70B in bf16: what transformers holds, whatever the file's bit width
    assert choose("hf", dense_70b, free=[]).device_map == "cpu"
    assert choose("hf", 16 * gb, free=[80 * gb]).device_map == "cuda"
    sharded = choose("hf", dense_70b, free=[80 * gb] * 4)
    assert (sharded.device_map, sharded.gpus, sharded.cpu_offload) == ("auto", 4, False)
    assert sharded.hf_model_args() == {"parallelize": True} and "sharded" in sharded.description
    offload = choose("hf", dense_70b, free=[80 * gb])
    assert offload.cpu_offload and "CPU offload" in offload.description
    assert choose("vllm", dense_70b, free=[80 * gb] * 4).gpus == 4
    assert choose("vllm", 16 * gb, free=[80 * gb] * 4).gpus == 1


def test_dense_bytes_scales_a_packed_checkpoint_to_what_transformers_holds(tmp_path):
    import json as _json

    from factory.stages.evaluate.placement import dense_bytes

    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    (tmp_path / "config.json").write_text(_json.dumps({"quantization_config": {
        "format": "pack-quantized", "config_groups": {"group_0": {"weights": {"num_bits": 4}}}}}))
    assert dense_bytes(tmp_path) == 4000


def test_llava_next_speed_runs_text_only_prompts(tmp_path, tiny_llava):
    from factory.pipeline.artifact import Artifact
    from factory.recipe import Speed
    from factory.stages.speed import run_measurement
    from factory.stages.speed.worker import _token_ids

    assert (_token_ids(64, 4, 200) == 20).any() and not (_token_ids(64, 4, 200, avoid=20) == 20).any()
    measured = run_measurement("transformers", "llava-next", Artifact("checkpoint", tiny_llava),
                               Speed(batch_sizes=[2], prompt_tokens=16, new_tokens=3))
    assert measured["weights_in_memory"] == "dense" and not measured["quantized_checkpoint"]
    assert measured["batches"][0]["decode_tokens_per_s"] > 0
