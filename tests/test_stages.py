"""A stage is one class and one registry line: a toy stage added that way gets its command, its
`needs` enforced by the runner, crash-safe output through run_stage, and its place in `publish`."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import write_recipe
from factory import registry
from factory.cli import main
from factory.cli.parser import build_parser
from factory.core.hub import LocalFolder
from factory.pipeline.build import Build
from factory.pipeline.publish import publish
from factory.pipeline.stage import Stage
from factory.recipe import load_recipe


class FileCount(Stage):
    """Counts the artifact's files and the scored tasks: reads two earlier stages' outputs."""

    name = "file-count"
    help = "count the files of each build's artifact"
    output = "file-count"
    needs = {"artifact": "", "evaluate": "the count includes the scored tasks"}
    missing = "not counted yet"

    def work(self, build, out, options):  # the contract's work: the default `run` gives it run_stage
        files = sorted(p.name for p in build.model_dir.iterdir())
        tasks = json.loads((build.stage_dir("evaluate") / "scores.json").read_text())["tasks"]
        (out / "count.json").write_text(json.dumps({"files": len(files), "tasks": len(tasks)}))
        return {"files": len(files)}

    def lines(self, build, result, options):
        return [f"  {result.record.get('files')} files" + (" (reused)" if result.skipped else "")]

    def published(self, build, result):
        return f"  file-count: {result.record.get('files')} files"


@pytest.fixture
def file_count_stage():
    registry.register_stage("file-count", FileCount, publish_after="evaluate")
    yield
    registry.unregister_stage("file-count")


def test_a_registered_stage_gets_a_command_and_a_place_in_publish(file_count_stage):
    assert "file-count" in build_parser().parse_args(["file-count", "r.yaml"]).command
    assert registry.PIPELINE == ("artifact", "evaluate", "file-count", "speed", "card", "push")


def test_unregistering_a_stage_takes_its_command_away():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["file-count", "r.yaml"])
    assert "file-count" not in registry.PIPELINE


def test_the_runner_enforces_needs_then_the_stage_runs_once(file_count_stage, evaluated_build, tmp_path, capsys):
    work, recipe_path = evaluated_build
    copy = tmp_path / "w"
    shutil.copytree(work, copy)
    recipe = load_recipe(recipe_path)
    build = Build(recipe, recipe.models[0], copy)
    evaluation = build.stage_dir("evaluate")
    shutil.move(evaluation, tmp_path / "eval-aside")  # the artifact is there, the evaluation is not

    assert main(["file-count", str(recipe_path), "--workdir", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {build.label}: not evaluated yet; the count includes the scored tasks "
                   f"(run: factory evaluate {recipe_path} --model test/tiny)")
    assert not build.stage_dir("file-count").exists()  # refused before any work

    shutil.move(tmp_path / "eval-aside", evaluation)
    assert main(["file-count", str(recipe_path), "--workdir", str(copy)]) == 0
    out = capsys.readouterr().out
    files = len(list(build.model_dir.iterdir()))
    assert f"file-count {recipe.name} / test/tiny\n  {files} files\n" in out
    assert json.loads((build.stage_dir("file-count") / "count.json").read_text())["files"] == files
    assert build.manifest().stage("file-count").status == "done"

    assert main(["file-count", str(recipe_path), "--workdir", str(copy)]) == 0
    assert f"  {files} files (reused)" in capsys.readouterr().out


def test_publish_runs_the_new_stage_in_its_place(file_count_stage, evaluated_build, tmp_path):
    work, recipe_path = evaluated_build
    copy = tmp_path / "w"
    shutil.copytree(work, copy)
    recipe = load_recipe(recipe_path)
    build = Build(recipe, recipe.models[0], copy)
    logs = []
    done = publish(build, LocalFolder(tmp_path / "hub"), log=logs.append)
    said = [line.split(":")[0].strip() for line in logs]
    assert [name for name in said if name in ("quantize", "evaluate", "file-count", "card")] == \
        ["quantize", "evaluate", "file-count", "card"]
    assert [name for name in done.results if name != "speed"] == ["artifact", "evaluate", "file-count", "card", "push"]
    assert (build.stage_dir("file-count") / "count.json").is_file()
