"""`factory plan` and `factory rebuild` against the Hub-compatible test server."""

from __future__ import annotations

import json

import pytest

from conftest import run_factory, write_recipe
from hub_server import patch_hf_client


def factory(hub, *args, env=None):
    return run_factory(*args, env={**hub.client_env(), **(env or {})})


@pytest.fixture(scope="module")
def published(hub, evaluated_build):
    work, recipe = evaluated_build
    done = factory(hub, "publish", str(recipe), "--workdir", str(work), "--org", "plan-org")
    assert done.returncode == 0, done.stderr[-3000:]
    return work, recipe


def test_fresh_stale_and_missing(hub, published):
    work, recipe = published
    changed = recipe.with_name("changed") / "rtn-4bit.yaml"  # same name and model, other settings
    changed.parent.mkdir(exist_ok=True)
    changed.write_text(recipe.read_text().replace("group_size: 32", "group_size: 32, symmetric: false"))
    unpublished = recipe.with_name("rtn-8bit.yaml")
    unpublished.write_text(recipe.read_text().replace("name: rtn-4bit", "name: rtn-8bit").replace("bits: 4", "bits: 8"))

    done = factory(hub, "plan", str(recipe), str(changed), str(unpublished), "--workdir", str(work),
                   "--org", "plan-org", "--format", "json")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {(r["recipe"], r["status"]): r for r in json.loads(done.stdout)}
    assert set(rows) == {(str(recipe), "fresh"), (str(changed), "stale"), (str(unpublished), "missing")}
    assert rows[(str(changed), "stale")]["reason"] == "recipe settings changed"
    assert rows[(str(unpublished), "missing")]["reason"] == "no such repo"
    assert rows[(str(recipe), "fresh")]["repo_id"] == "plan-org/tiny-rtn-4bit"

    table = factory(hub, "plan", str(recipe), str(unpublished), "--workdir", str(work), "--org", "plan-org")
    assert "2 builds: 1 fresh, 0 stale, 1 missing" in table.stdout


def test_github_matrix_lists_what_to_build(hub, published):
    work, recipe = published
    other = recipe.with_name("rtn-8bit.yaml")
    other.write_text(recipe.read_text().replace("name: rtn-4bit", "name: rtn-8bit").replace("bits: 4", "bits: 8"))
    pattern = str(recipe.parent / "rtn-*bit.yaml")  # a glob, expanded by factory
    done = factory(hub, "plan", pattern, "--workdir", str(work), "--org", "plan-org", "--format", "github-matrix")
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.strip().splitlines()) == 1  # one line, as `echo "matrix=..." >> $GITHUB_OUTPUT` needs
    matrix = json.loads(done.stdout)
    # test/tiny's config is on disk: its size (a few thousand parameters) puts it on the smallest runner
    small = {"runner": ["self-hosted", "linux", "gpu-80gb"], "runner_tier": "gpu-80gb"}
    [entry] = matrix["include"]
    assert entry["params_b"] < 0.01
    assert entry == {"recipe": str(other), "model": "test/tiny", "status": "missing", "reason": "no such repo",
                     "params_b": entry["params_b"], **small}
    everything = json.loads(factory(hub, "plan", pattern, "--workdir", str(work), "--org", "plan-org",
                                    "--format", "github-matrix", "--all").stdout)
    assert [e["status"] for e in everything["include"]] == ["fresh", "missing"]
    assert set(everything["include"][0]) == {"recipe", "model", "status", "reason", "runner", "runner_tier",
                                             "params_b"}

    # the runner tiers come from a repository variable; text that is not JSON is one line, exit 2
    bad = factory(hub, "plan", pattern, "--workdir", str(work), "--org", "plan-org", "--format", "github-matrix",
                  env={"FACTORY_RUNNER_LABELS": "{gpu: [self-hosted"})
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "FACTORY_RUNNER_LABELS is not valid JSON" in bad.stderr
    tiers = '{"any": {"up_to_b": null, "labels": ["self-hosted", "big-box"]}}'
    custom = json.loads(factory(hub, "plan", pattern, "--workdir", str(work), "--org", "plan-org",
                                "--format", "github-matrix", env={"FACTORY_RUNNER_LABELS": tiers}).stdout)
    assert custom["include"][0]["runner"] == ["self-hosted", "big-box"]

    markdown = factory(hub, "plan", pattern, "--workdir", str(work), "--org", "plan-org", "--format", "markdown")
    assert "| recipe | model | repo | status | reason |" in markdown.stdout


def test_base_revision_moved_and_library_versions(hub, tiny_llama, tmp_path, monkeypatch):
    """A recipe that follows `main` of a Hub model goes stale when main moves; so does a library upgrade."""
    patch_hf_client(monkeypatch, hub.url)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    from huggingface_hub import HfApi

    from factory.core.hub import Hub
    from factory.engines.base_models import resolve_hub_revision
    from factory.fleet import plan as planning
    from factory.pipeline.build import Build
    from factory.pipeline.fingerprint import factory_metadata
    from factory.recipe import load_recipe

    api = HfApi(endpoint=hub.url, token=hub.token)
    api.create_repo("base-org/tiny", exist_ok=True)
    api.upload_file(path_or_fileobj=str(tiny_llama / "config.json"), path_in_repo="config.json", repo_id="base-org/tiny")
    recipe_path = write_recipe(tmp_path, """
        name: rtn-4bit
        method: rtn
        weights: {bits: 4, group_size: 32}
        evaluation: {suite: smoke}
        publish: {org: follow}
        models: [{id: base-org/tiny, revision: main}]
    """)
    resolve_hub_revision.cache_clear()
    recipe = load_recipe(recipe_path)
    build = Build(recipe, recipe.models[0], tmp_path)
    metadata = factory_metadata(build)
    assert metadata["base_revision"] == api.model_info("base-org/tiny").sha  # a commit, not "main"

    def publish_card(block: dict) -> None:  # what a publish leaves on the Hub, without building
        api.create_repo("follow/tiny-rtn-4bit", exist_ok=True)
        card = "---\n" + json.dumps({"factory": block}) + "\n---\n# card\n"
        api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id="follow/tiny-rtn-4bit")

    def status() -> tuple[str, str]:
        resolve_hub_revision.cache_clear()  # a new process resolves afresh
        row = planning.plan([str(recipe_path)], Hub(), tmp_path)[0]
        return row.status, row.reason

    publish_card(metadata)
    assert status() == ("fresh", "")

    old = metadata["base_revision"]
    api.upload_file(path_or_fileobj=b"new weights, say", path_in_repo="notes.txt", repo_id="base-org/tiny")
    new = api.model_info("base-org/tiny").sha
    assert status() == ("stale", f"base revision moved ({old[:7]} -> {new[:7]})")

    resolve_hub_revision.cache_clear()
    current = factory_metadata(Build(recipe, recipe.models[0], tmp_path))
    publish_card({**current, "fingerprint": "0" * 16,
                  "libraries": {**current["libraries"], "transformers": "5.16.0"}})
    assert status() == ("stale", f"library versions changed (transformers 5.16.0 -> {current['libraries']['transformers']})")


def test_rebuild_continues_past_a_failing_build(hub, published, tmp_path):
    work, recipe = published
    failing = recipe.with_name("gptq-fails.yaml")
    failing.write_text(recipe.read_text().replace("name: rtn-4bit", "name: gptq-fails").replace(
        "method: rtn", "method: gptq\ncalibration: {source: demo, samples: 2, seq_len: 131072}"))
    done = factory(hub, "rebuild", str(failing), str(recipe), "--workdir", str(work), "--org", "rebuild-org")
    assert done.returncode == 1
    assert "calibration: the text has" in done.stderr and "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("gptq-fails") and "failed" in line for line in lines)
    assert any(line.startswith("rtn-4bit") and "published" in line for line in lines)
    assert "1 of 2 builds failed" in done.stderr
    assert "model.safetensors" in hub.repo_files("rebuild-org/tiny-rtn-4bit")

    again = factory(hub, "rebuild", str(recipe), "--workdir", str(work), "--org", "rebuild-org")
    assert again.returncode == 0 and "nothing to rebuild: every build is fresh" in again.stdout


def test_rebuild_max_builds(hub, published):
    work, recipe = published
    eight = recipe.with_name("rtn-8bit.yaml")
    eight.write_text(recipe.read_text().replace("name: rtn-4bit", "name: rtn-8bit").replace("bits: 4", "bits: 8"))
    done = factory(hub, "rebuild", str(recipe), str(eight), "--workdir", str(work), "--org", "max-org",
                   "--max-builds", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(hub.repo_files("max-org/tiny-rtn-4bit")) > {".gitattributes"}
    with pytest.raises(KeyError):
        hub.repo_files("max-org/tiny-rtn-8bit")


def test_bad_input_is_one_line(hub, published, tmp_path):
    work, recipe = published
    nothing = factory(hub, "plan", str(tmp_path / "no-*.yaml"), "--workdir", str(work))
    assert nothing.returncode == 2 and nothing.stderr.strip() == f"error: no recipe file matches '{tmp_path / 'no-*.yaml'}'"

    down = run_factory("plan", str(recipe), "--workdir", str(work), "--org", "plan-org",
                       env={**hub.client_env(), "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert down.stderr.strip().startswith("error: cannot read plan-org/tiny-rtn-4bit: the Hub did not answer")

    no_org = write_recipe(tmp_path, recipe.read_text().replace("publish: {org: tester}\n", ""), "no-org.yaml")
    no_token = factory(hub, "plan", str(no_org), "--workdir", str(work),
                       env={"HF_TOKEN": "", "HF_HOME": str(tmp_path / "no-login")})
    assert no_token.returncode == 2
    assert no_token.stderr.strip() == ("error: publish.org is not set and there is no token to ask the Hub for your "
                                       "user name: set publish.org in the recipe, pass --org, or set HF_TOKEN")
    rebuild = factory(hub, "rebuild", str(recipe), "--workdir", str(work),
                      env={"HF_TOKEN": "", "HF_HOME": str(tmp_path / "no-login")})
    assert rebuild.returncode == 2 and rebuild.stderr.strip().startswith("error: no Hugging Face token")
    whoami = factory(hub, "plan", str(no_org), "--workdir", str(work), "--format", "json")
    assert whoami.returncode == 0 and json.loads(whoami.stdout)[0]["repo_id"] == "tester/tiny-rtn-4bit"


def test_ctrl_c_delivered_to_a_lookup_thread_still_ends_the_wait():
    """The kernel may hand SIGINT to any thread; Python runs the handler in the main thread only when that
    thread next runs bytecode. A lookup thread blocked in a read takes the signal here (pthread_kill): the
    main thread's wait must still raise KeyboardInterrupt at once, not when the lookup ends (3 s)."""
    import signal
    import threading
    import time

    from factory.fleet.plan import lookups

    blocked = threading.Event()

    class SlowTarget:
        thread_id = None

        def lookup(self, repo):
            SlowTarget.thread_id = threading.get_ident()
            blocked.set()
            time.sleep(3)  # a read that the signal does not end (PEP 475 resumes it)
            return None

    def interrupt_the_lookup_thread():
        blocked.wait(10)
        time.sleep(0.2)
        signal.pthread_kill(SlowTarget.thread_id, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt_the_lookup_thread, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            lookups(SlowTarget(), ["org/repo"])
        assert time.monotonic() - started < 1.5
    finally:
        signal.signal(signal.SIGINT, previous)
