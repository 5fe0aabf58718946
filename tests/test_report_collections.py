"""`factory report --push`: the report repo and one Collection per base model and org, on a local folder
target (a file in the Hub's shape) and on the test Hub server (huggingface_hub's collections API): a second
run changes nothing, a removed build is dropped, a changed recovery updates its note, a 409 is handled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO, run_factory
from factory.core.collection_title import TITLE_MAX, title_for
from factory.fleet.hub_collections import sync_all
from factory.fleet.report_publish import make_report, publish
from hub_server import patch_hf_client
from report_fakes import fake_build, scores_for

LLAMA = "meta-llama/Meta-Llama-3-8B"
RECIPES = REPO / "recipes"
NAMES = ("gptq-4bit", "rtn-2bit", "rtn-4bit")


def _figures(recovery: float) -> dict:
    return {"wikitext2_ppl": (6.1, 6.1 / recovery), "piqa": (0.8, 0.8 * recovery)}


def _builds(root: Path, recovery: dict[str, float] | None = None) -> list[str]:
    recovery = recovery or {}
    for name in NAMES:
        fake_build(root, RECIPES / f"{name}.yaml", LLAMA, scores_for(_figures(recovery.get(name, 0.9))))
    return [str(RECIPES / f"{name}.yaml") for name in NAMES]


def _publish_small_files(root: Path, put) -> None:
    """What `factory push` leaves in a build's repo, as far as the report reads it: the card's factory block and
    evaluation/scores.json (plus a stand-in weight file)."""
    for name in NAMES:
        build_dir = root / "builds" / name / "meta-llama--Meta-Llama-3-8B"
        put(f"local/Meta-Llama-3-8B-{name}", {
            "README.md": b"---\nfactory:\n  fingerprint: abc\n---\n",
            "evaluation/scores.json": (build_dir / "eval" / "scores.json").read_bytes(),
            "model.safetensors": b"\0" * 1024})


def _folder_put(hub: Path):
    def put(repo: str, files: dict[str, bytes]) -> None:
        for path, data in files.items():
            (hub / repo / path).parent.mkdir(parents=True, exist_ok=True)
            (hub / repo / path).write_bytes(data)
    return put


def test_local_folder_collection_second_run_removed_build_changed_note(tmp_path):
    from factory.core.hub import LocalFolder

    recipes = _builds(tmp_path)
    hub = tmp_path / "hub"
    _publish_small_files(tmp_path, _folder_put(hub))
    target = LocalFolder(hub)

    def run(log=lambda line: None):
        made = make_report(recipes, tmp_path, tmp_path / "report", target, log=log)
        return publish(made, recipes, tmp_path, target, None, "local/llama3-lowbit-report", log=log)

    run()
    files = list((hub / ".collections" / "local").glob("*.json"))
    assert [f.name for f in files] == ["meta-llama-3-8b-low-bit-factory.json"]
    collection = json.loads(files[0].read_text())
    assert collection["title"] == "Meta-Llama-3-8B low-bit (factory)"
    ids = [i["id"] for i in collection["items"]]
    assert ids == ["local/Meta-Llama-3-8B-rtn-2bit", "local/Meta-Llama-3-8B-gptq-4bit",
                   "local/Meta-Llama-3-8B-rtn-4bit", "local/llama3-lowbit-report"]  # bits, then method; the report
    gptq = collection["items"][1]["note"]["text"]
    assert "gptq W4A16-g128" in gptq and "4 bits" in gptq and "4.12 effective bits/weight" in gptq
    assert "mean recovery 0.900" in gptq and len(gptq) <= 500
    before = files[0].read_bytes()

    said = []
    run(said.append)  # the same builds: nothing changes
    assert files[0].read_bytes() == before
    assert any("report unchanged" in line for line in said)
    assert any("unchanged (4 items)" in line for line in said)

    shutil.rmtree(hub / "local" / "Meta-Llama-3-8B-rtn-4bit")  # a build whose repo is gone
    fake_build(tmp_path, RECIPES / "gptq-4bit.yaml", LLAMA, scores_for(_figures(0.95)))  # a changed recovery
    _folder_put(hub)("local/Meta-Llama-3-8B-gptq-4bit", {"evaluation/scores.json": (
        tmp_path / "builds/gptq-4bit/meta-llama--Meta-Llama-3-8B/eval/scores.json").read_bytes()})
    said = []
    run(said.append)
    collection = json.loads(files[0].read_text())
    assert [i["id"] for i in collection["items"]] == ["local/Meta-Llama-3-8B-rtn-2bit",
                                                      "local/Meta-Llama-3-8B-gptq-4bit", "local/llama3-lowbit-report"]
    assert "mean recovery 0.950" in collection["items"][1]["note"]["text"]
    assert any("1 notes updated, 1 removed" in line for line in said)


def test_title_over_the_limit_is_one_line_and_changes_nothing(tmp_path):
    from factory.core.hub import LocalFolder

    long_model = "org/" + "x" * TITLE_MAX
    builds = make_report(_builds(tmp_path), tmp_path, tmp_path / "report", log=lambda line: None).found.builds
    builds[0].model = long_model
    builds[0].repo_id = "local/Meta-Llama-3-8B-gptq-4bit"
    from factory.core.errors import UserError

    with pytest.raises(UserError, match="over the 60"):
        sync_all(LocalFolder(tmp_path / "hub"), builds, None)
    assert not (tmp_path / "hub" / ".collections").exists()
    assert len(title_for(LLAMA)) <= TITLE_MAX


@pytest.fixture
def on_hub(hub, monkeypatch, tmp_path):
    from huggingface_hub import CommitOperationAdd, HfApi

    patch_hf_client(monkeypatch, hub.url)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    api = HfApi(endpoint=hub.url, token=hub.token)
    namespace = f"org{tmp_path.name[-12:].replace('_', '').lower()}"

    def put(repo: str, files: dict[str, bytes]) -> None:
        repo = repo.replace("local/", f"{namespace}/")
        api.create_repo(repo, exist_ok=True)
        api.create_commit(repo, [CommitOperationAdd(p, d) for p, d in files.items()], commit_message="build")

    recipes = _builds(tmp_path)
    _publish_small_files(tmp_path, put)
    return api, namespace, recipes, put


def test_hub_collection_second_run_removed_build_and_409(hub, on_hub, tmp_path):
    from factory.core.hub import Hub

    api, namespace, recipes, put = on_hub
    target = Hub()
    report = f"{namespace}/llama3-lowbit-report"

    def run():
        made = make_report(recipes, tmp_path, tmp_path / "report", target, org=namespace, log=lambda line: None)
        return publish(made, recipes, tmp_path, target, namespace, report, log=lambda line: None)

    before = len(hub.requests)  # the server is shared with other tests: only this report's downloads count
    first = run()
    downloads = [p for m, p in hub.requests[before:] if "/resolve/" in p]
    assert downloads and not any(p.endswith(".safetensors") for p in downloads)  # small files only
    assert not first.skipped and hub.repo_files(report)["README.md"].startswith(b"---")
    [collection] = hub.collections(namespace)
    assert collection["title"] == "Meta-Llama-3-8B low-bit (factory)"
    assert [i["id"] for i in collection["items"]] == [f"{namespace}/Meta-Llama-3-8B-rtn-2bit",
                                                      f"{namespace}/Meta-Llama-3-8B-gptq-4bit",
                                                      f"{namespace}/Meta-Llama-3-8B-rtn-4bit", report]
    # the client reads the collection back as huggingface_hub's own Collection
    read = api.get_collection(collection["slug"])
    assert read.items[1].note.startswith("gptq W4A16-g128")

    commits, requests = len(hub.commits(report)), len(hub.requests)
    second = run()  # nothing changed: no commit, no collection write (create answers 409, exists_ok reads it)
    assert second.skipped and len(hub.commits(report)) == commits
    writes = [(m, p) for m, p in hub.requests[requests:] if p.startswith("/api/collections") and m != "GET"]
    assert writes == [("POST", "/api/collections")]
    assert hub.collections(namespace) == [collection]

    api.delete_repo(f"{namespace}/Meta-Llama-3-8B-rtn-4bit")
    run()
    [after] = hub.collections(namespace)
    assert [i["id"] for i in after["items"]] == [f"{namespace}/Meta-Llama-3-8B-rtn-2bit",
                                                 f"{namespace}/Meta-Llama-3-8B-gptq-4bit", report]

    # adding an item that is already there: the Hub answers 409; the factory's call (exists_ok) takes it
    from huggingface_hub.errors import HfHubHTTPError

    from factory.fleet.hub_collections import HubCollections

    with pytest.raises(HfHubHTTPError) as raised:
        api.add_collection_item(after["slug"], report, "model")
    assert raised.value.response.status_code == 409
    HubCollections(target).add_item(after["slug"], report, "again")
    assert len(hub.collections(namespace)[0]["items"]) == 3


def test_hub_org_without_write_access_is_one_line(hub, on_hub, tmp_path):
    api, namespace, recipes, put = on_hub
    made_env = hub.client_env()
    hub.deny_writes("tester", namespace)
    try:
        done = run_factory("report", *recipes, "--workdir", str(tmp_path), "--org", namespace, "--from-hub",
                           "--push", f"{namespace}/llama3-lowbit-report", env=made_env)
    finally:
        hub._denied.discard(("tester", namespace.lower()))
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "403" in lines[0] and "Traceback" not in done.stderr
    assert hub.collections(namespace) == []


def test_report_push_with_a_title_over_the_limit_writes_nothing(tmp_path):
    """A base model whose Collection title would be too long: one line, exit 2, no report commit either."""
    long_id = "org/" + "x" * 50
    recipe = tmp_path / "rtn-4bit.yaml"
    recipe.write_text((RECIPES / "rtn-4bit.yaml").read_text().split("models:")[0]
                      + f"models:\n  - {{id: {long_id}, kind: causal-lm, license: mit}}\n")
    fake_build(tmp_path, recipe, long_id, scores_for(_figures(0.9)))
    hub = tmp_path / "hub"
    _folder_put(hub)("local/" + "x" * 50 + "-rtn-4bit", {
        "README.md": b"---\nfactory:\n  fingerprint: abc\n---\n",
        "evaluation/scores.json": (tmp_path / "builds/rtn-4bit" / ("org--" + "x" * 50) / "eval/scores.json").read_bytes()})
    done = run_factory("report", str(recipe), "--workdir", str(tmp_path), "--to", str(hub),
                       "--push", "local/the-report")
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "over the 60" in lines[0]
    assert not (hub / "local" / "the-report").exists() and not (hub / ".collections").exists()
