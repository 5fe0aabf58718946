"""A run killed with SIGKILL at any point never leaves a stage that a later run takes as finished."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, run_factory, write_recipe

# Runs the real CLI in a child process, with one function wrapped so that the process
# SIGKILLs itself at a chosen point: no cleanup handler runs, exactly as with `kill -9`.
KILLER = textwrap.dedent("""
    import os, signal, sys
    import factory.pipeline.build as build
    from factory.methods.llmcompressor_base import LLMCompressorMethod as engine
    point = os.environ["KILL_AT"]

    if point == "after-engine-wrote":
        real = engine.quantize
        def quantize(*args, **kwargs):
            real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        engine.quantize = quantize
    elif point == "after-rename":
        real_update = build.Build.update_stage
        def update(self, stage, record):
            if record.status == "done":
                os.kill(os.getpid(), signal.SIGKILL)
            real_update(self, stage, record)
        build.Build.update_stage = update

    from factory.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("kill_at", ["after-engine-wrote", "after-rename"])
def test_killed_run_is_not_taken_as_done_and_resumes(kill_at, tmp_path, tiny_llama):
    recipe = write_recipe(tmp_path, f"""
        name: killed
        method: gptq
        weights: {{bits: 4, group_size: 32}}
        calibration: {{source: demo, samples: 4, seq_len: 64}}
        models: [{{id: test/tiny, source: local, path: {tiny_llama}}}]
    """)
    build_dir = tmp_path / "builds" / "killed" / "test--tiny"
    killed = subprocess.run([sys.executable, "-c", KILLER, "quantize", str(recipe), "--workdir", str(tmp_path)],
                            cwd=REPO, env={**__import__("os").environ, "KILL_AT": kill_at},
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]

    manifest = json.loads((build_dir / "manifest.json").read_text())
    assert manifest["stages"]["quantize"]["status"] == "running"
    if kill_at == "after-engine-wrote":
        assert not (build_dir / "model").exists()
        assert list(build_dir.glob("model.partial-*"))  # the half-written output is aside, not in place
    else:
        assert (build_dir / "model").is_dir()  # in place, but never marked done

    resumed = run_factory("quantize", str(recipe), "--workdir", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "skipped" not in resumed.stdout  # the killed stage ran again
    manifest = json.loads((build_dir / "manifest.json").read_text())
    assert manifest["stages"]["quantize"]["status"] == "done"
    assert not list(build_dir.glob("model.partial-*"))
    assert (build_dir / "model" / "config.json").is_file()

    again = run_factory("quantize", str(recipe), "--workdir", str(tmp_path))
    assert "skipped" in again.stdout


def test_failed_engine_leaves_nothing_in_place(tmp_path, tiny_llama, monkeypatch):
    from factory.methods.llmcompressor_base import LLMCompressorMethod
    from factory.pipeline.build import Build
    from factory.recipe import load_recipe
    from factory.stages.artifact import quantize

    def broken(self, base_dir, settings, out_dir, recipe_dir):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LLMCompressorMethod, "quantize", broken)
    # rtn builds model-free by default: that engine fails the same way
    monkeypatch.setattr(LLMCompressorMethod, "quantize_model_free", lambda self, base, settings, out: broken(
        self, base, settings, out, None))
    recipe = load_recipe(write_recipe(tmp_path, f"""
        name: full-disk
        method: rtn
        weights: {{bits: 4, group_size: 32}}
        models: [{{id: test/tiny, source: local, path: {tiny_llama}}}]
    """))
    build = Build(recipe, recipe.models[0], tmp_path)
    with pytest.raises(OSError):
        quantize(build)
    stage = build.manifest().stages["quantize"]
    assert stage.status == "failed" and "No space left" in stage.error
    assert not build.model_dir.exists() and not list(build.dir.glob("model.partial-*"))


def test_full_disk_through_the_cli_is_one_line(tmp_path, tiny_llama):
    recipe = write_recipe(tmp_path, f"""
        name: full-disk
        method: rtn
        weights: {{bits: 4, group_size: 32}}
        models: [{{id: test/tiny, source: local, path: {tiny_llama}}}]
    """)
    script = textwrap.dedent("""
        import sys
        from factory.methods.llmcompressor_base import LLMCompressorMethod
        def full(*a, **k):
            raise OSError(28, "No space left on device")
        LLMCompressorMethod.quantize = LLMCompressorMethod.quantize_model_free = full  # rtn: model-free by default
        from factory.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    done = subprocess.run([sys.executable, "-c", script, "quantize", str(recipe), "--workdir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "error: no space left on device; the unfinished stage was discarded"
    assert "Traceback" not in done.stderr
