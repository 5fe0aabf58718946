"""`factory publish` / `push` against a Hub-compatible server with huggingface_hub's real client.

Every CLI run is a fresh process with HF_ENDPOINT pointing at the server (as a user or CI runs
it); the in-process tests patch the already-imported client the same way (hub_server.patch_hf_client).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_factory, write_recipe
from hub_server import patch_hf_client

REPO_ID = "tester/tiny-rtn-4bit"
OUTPUTS: list[str] = []  # every CLI output of this module, for the token check


def factory(hub, *args, env=None):
    done = run_factory(*args, env={**hub.client_env(), **(env or {})})
    OUTPUTS.extend([done.stdout, done.stderr])
    return done


@pytest.fixture(scope="module")
def published(hub, evaluated_build):
    work, recipe = evaluated_build
    done = factory(hub, "publish", str(recipe), "--workdir", str(work))
    assert done.returncode == 0, done.stderr[-3000:]
    return work, recipe, done


GENERATE = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
if sys.argv[2] == "download":
    from huggingface_hub import snapshot_download
    path = snapshot_download(path, local_dir=sys.argv[3])
model = AutoModelForCausalLM.from_pretrained(path)
tokenizer = AutoTokenizer.from_pretrained(path)
ids = tokenizer("The quick brown fox", return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=8, do_sample=False)
print(json.dumps({"tokens": out[0].tolist(), "factory": any(m.startswith("factory") for m in sys.modules)}))
"""


def _generate(args: list[str], env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", GENERATE, *args], capture_output=True, text=True, timeout=600,
                          cwd="/", env={**os.environ, "PYTHONPATH": "", **env})
    OUTPUTS.extend([done.stdout, done.stderr])
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_publish_then_download_and_generate_the_same_tokens(hub, published, tmp_path):
    work, recipe, done = published
    assert "pushed" in done.stdout and "verified names, sizes and hashes" in done.stdout
    assert "card:" in done.stdout
    commits = hub.commits(REPO_ID)
    assert len(commits) == 2  # the repo's initial commit, then the whole build in ONE commit
    files = hub.repo_files(REPO_ID)
    assert {"README.md", "recovery.png", "config.json", "model.safetensors", "evaluation/scores.json"} <= set(files)
    fingerprint = json.loads((work / "builds" / "rtn-4bit" / "test--tiny" / "manifest.json").read_text())[
        "stages"]["push"]["publish_fingerprint"]
    assert hub.tags(REPO_ID) == {f"factory-{fingerprint}": commits[-1]["oid"]}
    assert fingerprint in commits[-1]["message"]

    local_model = work / "builds" / "rtn-4bit" / "test--tiny" / "model"
    env = {**hub.client_env(), "HF_HOME": str(tmp_path / "hf-home")}
    remote = _generate([REPO_ID, "download", str(tmp_path / "snapshot")], env)
    local = _generate([str(local_model), "local", ""], env)
    assert remote["factory"] is False
    assert remote["tokens"] == local["tokens"] and len(remote["tokens"]) > 4


def test_card_metadata_on_the_hub_holds_the_fingerprint(hub, published, monkeypatch):
    patch_hf_client(monkeypatch, hub.url)
    from huggingface_hub import HfApi

    info = HfApi(endpoint=hub.url).model_info(REPO_ID)
    data = info.card_data.to_dict()
    assert data["base_model"] == "test/tiny" and data["base_model_relation"] == "quantized"
    assert data["factory"]["fingerprint"] in hub.tags(REPO_ID).popitem()[0]
    assert data["model-index"][0]["results"]


def test_second_publish_is_a_no_op(hub, published):
    work, recipe, _ = published
    before = hub.commits(REPO_ID)
    done = factory(hub, "publish", str(recipe), "--workdir", str(work))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "already holds tester/tiny-rtn-4bit at fingerprint" in done.stdout
    assert hub.commits(REPO_ID) == before


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_commit_failure_publishes_nothing_and_the_next_run_completes(hub, published, mode):
    work, recipe, _ = published
    org = f"fail-{mode}"
    hub.fail_next("commit", mode)
    done = factory(hub, "publish", str(recipe), "--workdir", str(work), "--org", org)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]  # after huggingface_hub's upload progress bars
    assert last.startswith(f"error: cannot upload to {org}/tiny-rtn-4bit: ") and last.endswith(
        "nothing was published; run again")
    repo = f"{org}/tiny-rtn-4bit"
    assert set(hub.repo_files(repo)) == {".gitattributes"}  # created, but no file of the build
    plan = factory(hub, "plan", str(recipe), "--workdir", str(work), "--org", org, "--format", "json")
    assert json.loads(plan.stdout)[0]["status"] == "missing"

    again = factory(hub, "publish", str(recipe), "--workdir", str(work), "--org", org)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "model.safetensors" in hub.repo_files(repo) and len(hub.commits(repo)) == 2


def test_lfs_upload_failure_publishes_nothing(evaluated_build, monkeypatch, tmp_path):
    """The upload of a weights file fails (every retry of the client): no commit is made."""
    from hub_server import FakeHub

    # A hub of its own: the session's server already stores this build's blobs, and skips them.
    hub = FakeHub(tmp_path / "hub").start()
    patch_hf_client(monkeypatch, hub.url)  # retries without their sleeps
    monkeypatch.setenv("HF_TOKEN", hub.token)
    from factory.core.errors import FactoryError
    from factory.core.hub import Hub
    from factory.pipeline.build import Build
    from factory.recipe import load_recipe
    from factory.stages.card import card
    from factory.stages.push import push

    work, recipe_path = evaluated_build
    recipe = load_recipe(recipe_path)
    build = Build(recipe, recipe.models[0], work)
    repo = "lfs-fail/tiny-rtn-4bit"
    card(build, repo)
    from factory.stages.push import upload_files

    # Each LFS file (weights, plots) is tried once and retried 5 times, in parallel: fail them all.
    lfs_files = [p for p in upload_files(build) if p.endswith((".safetensors", ".png"))]
    hub.fail_next("lfs_upload", "drop", count=6 * len(lfs_files))
    with pytest.raises(FactoryError, match="nothing was published"):
        push(build, Hub(), repo, log=lambda line: None)
    hub.clear_faults()
    assert set(hub.repo_files(repo)) == {".gitattributes"}
    assert push(build, Hub(), repo, log=lambda line: None).skipped is False
    assert "model.safetensors" in hub.repo_files(repo)
    hub.stop()


def test_missing_token_is_one_line_and_nothing_is_built(hub, evaluated_build, tmp_path):
    _, recipe = evaluated_build
    empty = tmp_path / "work"
    done = factory(hub, "publish", str(recipe), "--workdir", str(empty),
                   env={"HF_TOKEN": "", "HF_HOME": str(tmp_path / "no-login")})
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: no Hugging Face token: set HF_TOKEN (or run `hf auth login`) to publish to {hub.url}"
    assert not empty.exists()


def test_refused_permission_is_one_line(hub, published):
    work, recipe, _ = published
    hub.deny_writes("tester", "not-mine")
    done = factory(hub, "publish", str(recipe), "--workdir", str(work), "--org", "not-mine")
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: cannot create not-mine/tiny-rtn-4bit: permission refused (HTTP 403); "
                                   "the token may not write to this namespace")


def test_rejected_token_is_one_line(hub, published):
    work, recipe, _ = published
    done = factory(hub, "publish", str(recipe), "--workdir", str(work), "--org", "someone",
                   env={"HF_TOKEN": "hf_not_a_valid_token"})
    assert done.returncode == 2
    assert "the Hub rejected the token (HTTP 401)" in done.stderr and "hf_not_a_valid_token" not in done.stderr


def test_dry_run_against_the_hub_writes_nothing(hub, published):
    work, recipe, _ = published
    before = hub.commits(REPO_ID)
    done = factory(hub, "publish", str(recipe), "--workdir", str(work), "--dry-run", "--force")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"dry run: nothing is written to the Hub at {hub.url}" in done.stdout
    assert "it already holds fingerprint" in done.stdout and "model.safetensors" in done.stdout
    assert hub.commits(REPO_ID) == before


def test_token_appears_in_no_output_and_no_file(hub, published, tmp_path):
    """Runs last in this module: every CLI output so far, and every file the runs wrote."""
    work, recipe, _ = published
    verbose = factory(hub, "publish", str(recipe), "--workdir", str(work), "-v", "--force",
                      "--summary", str(work / "summary.md"))
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    token = hub.token
    assert OUTPUTS and not [o for o in OUTPUTS if token in o]
    roots = [work, Path(os.environ["FACTORY_CACHE"])]
    leaked = [p for root in roots for p in root.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert leaked == []
    assert "published" in (work / "summary.md").read_text()
