"""FakeHub (tests/hub_server.py) driven by huggingface_hub's real client: HfApi, create_commit with LFS, downloads.

How the client is pointed at the fake hub, and why (huggingface_hub 1.33):

* Offline mode: tests/conftest.py sets HF_HUB_OFFLINE=1 before huggingface_hub is imported. The client's httpx
  request hook calls `constants.is_offline_mode()`, which returns the module attribute `constants.HF_HUB_OFFLINE`
  computed from the environment *at import*; setting the environment variable later changes nothing
  (test_offline_mode_is_the_import_time_constant shows both). So `patch_hf_client` monkeypatches
  `huggingface_hub.constants.HF_HUB_OFFLINE = False` for the test's duration.
* Xet: with hf_xet installed, `_upload_files` uploads through Xet (no LFS fallback) whenever
  `is_xet_available()`, which checks `constants.HF_HUB_DISABLE_XET` at call time before looking for the package.
  `patch_hf_client` sets that attribute to True. Downloads only take the Xet path when the server sends an
  `X-Xet-Hash` header, which FakeHub never does.
* Endpoint: every call passes `endpoint=hub.url` explicitly (`patch_hf_client` is called without an endpoint).
* Retries: `http_backoff` (preupload, LFS batch, LFS PUT, verify) retries 408/429/5xx and network errors 5 times,
  sleeping 1+2+4+8+8 s; the commit POST and model_info are not retried. `patch_hf_client` turns those sleeps into
  no-ops, and fault counts below are sized to get past the 6 attempts where a failure must surface.
"""

from __future__ import annotations

import base64
import hashlib
import json
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
from huggingface_hub import (CommitOperationAdd, CommitOperationDelete, HfApi, constants as hf_constants,
                             hf_hub_download, snapshot_download)
from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                    RevisionNotFoundError)
from safetensors.numpy import load, save

from hub_server import DEFAULT_TOKEN, GITATTRIBUTES, FakeHub, patch_hf_client

README = b"""---
license: apache-2.0
library_name: transformers
tags:
- quantized
- w4a16
base_model: HuggingFaceTB/SmolLM2-135M
---
# tiny model

Quantized for the tests.
"""
OTHER_TOKEN = "hf_other_token_abcdef"
RETRY_ATTEMPTS = 6  # http_backoff: 1 try + max_retries=5


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with FakeHub(tmp_path / "hub", users={DEFAULT_TOKEN: "tester", OTHER_TOKEN: "other"}) as h:
        patch_hf_client(monkeypatch)
        yield h


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.url, token=hub.token)


@pytest.fixture
def weights() -> bytes:
    rng = np.random.default_rng(0)
    return save({"model.layers.0.weight": rng.standard_normal((64, 64)).astype(np.float32),
                 "lm_head.weight": rng.standard_normal((32, 64)).astype(np.float32)})


def _first_commit(api: HfApi, repo_id: str, weights: bytes):
    return api.create_commit(repo_id, operations=[
        CommitOperationAdd("README.md", README),
        CommitOperationAdd("model.safetensors", weights),
        CommitOperationAdd("sub/config.json", b'{"hidden_size": 64}\n'),
    ], commit_message="Upload model", commit_description="first upload")


def test_offline_mode_is_the_import_time_constant(hub, monkeypatch):
    api = HfApi(endpoint=hub.url, token=hub.token)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # too late: read once, at import
    with pytest.raises(OfflineModeIsEnabled):
        api.whoami()
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    assert api.whoami()["name"] == "tester"
    assert hub.requests == [("GET", "/api/whoami-v2")]


def test_create_repo_and_exist_ok(hub, api):
    url = api.create_repo("tester/tiny")
    assert (url.repo_id, url.endpoint, str(url)) == ("tester/tiny", hub.url, f"{hub.url}/tester/tiny")
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo("tester/tiny")
    assert exc.value.response.status_code == 409
    assert api.create_repo("tester/tiny", exist_ok=True).repo_id == "tester/tiny"
    # No namespace: the repo goes to the token's user, as on the Hub.
    assert api.create_repo("solo").repo_id == "tester/solo"
    # Like the Hub, a new repo has an initial commit with .gitattributes.
    assert hub.repo_files("tester/tiny") == {".gitattributes": GITATTRIBUTES}
    assert [c["message"] for c in hub.commits("tester/tiny")] == ["initial commit"]
    assert api.model_info("tester/tiny").sha == hub.commits("tester/tiny")[0]["oid"]


def test_invalid_repo_name_is_400(hub):
    # The client validates repo ids itself, so talk to the server directly.
    r = httpx.post(f"{hub.url}/api/repos/create", json={"name": "bad--name", "type": "model"},
                   headers={"authorization": f"Bearer {hub.token}"})
    assert r.status_code == 400 and "Invalid repo name" in r.json()["error"]
    r = httpx.post(f"{hub.url}/api/repos/create", json={"name": "sp", "type": "space"},
                   headers={"authorization": f"Bearer {hub.token}"})
    assert r.status_code == 404 and "model and dataset repos" in r.json()["error"]


def test_dataset_repos_beside_model_repos(hub, api, weights, tmp_path):
    """A dataset repo (what `publish.base_evals` names) and a model repo of the same id stay apart."""
    url = api.create_repo("tester/evals", repo_type="dataset")
    assert (url.repo_id, url.repo_type, str(url)) == ("tester/evals", "dataset", f"{hub.url}/datasets/tester/evals")
    assert api.create_repo("tester/evals", repo_type="dataset", exist_ok=True).repo_type == "dataset"
    api.create_repo("tester/evals")  # a model repo with the same name is another repo
    head = api.dataset_info("tester/evals").sha
    info = api.create_commit("tester/evals", [CommitOperationAdd("m/a.json", b'{"a": 1}\n'),
                                              CommitOperationAdd("m/w.safetensors", weights)],
                             commit_message="add", repo_type="dataset", parent_commit=head)
    assert f"/datasets/tester/evals/commit/{info.oid}" in info.commit_url
    assert ("POST", "/datasets/tester/evals.git/info/lfs/objects/batch") in hub.requests
    assert hub.repo_files("datasets/tester/evals") == {".gitattributes": GITATTRIBUTES, "m/a.json": b'{"a": 1}\n',
                                                       "m/w.safetensors": weights}
    assert hub.repo_files("tester/evals") == {".gitattributes": GITATTRIBUTES}
    assert [p.path for p in api.get_paths_info("tester/evals", ["m/a.json", "m/b.json"], repo_type="dataset")] \
        == ["m/a.json"]
    local = hf_hub_download("tester/evals", "m/a.json", repo_type="dataset", endpoint=hub.url, token=hub.token,
                            cache_dir=tmp_path / "cache")
    assert Path(local).read_bytes() == b'{"a": 1}\n'
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("tester/evals", "m/b.json", repo_type="dataset", endpoint=hub.url, token=hub.token,
                        cache_dir=tmp_path / "cache")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/nothing", "m/a.json", repo_type="dataset", endpoint=hub.url, token=hub.token,
                        cache_dir=tmp_path / "cache")
    with pytest.raises(HfHubHTTPError) as exc:  # a stale parent: someone else committed meanwhile
        api.create_commit("tester/evals", [CommitOperationAdd("m/c.json", b"{}")], commit_message="late",
                          repo_type="dataset", parent_commit=head)
    assert exc.value.response.status_code == 412


def test_commit_info_tags_tree_and_downloads(hub, api, weights, tmp_path):
    repo_id = api.create_repo("tester/tiny").repo_id
    info = _first_commit(api, repo_id, weights)
    assert len(info.oid) == 40 and info.pr_url is None and info.commit_url.endswith(f"/commit/{info.oid}")

    # The LFS path was taken (not Xet): batch, one PUT for the safetensors, verify; regular files went inline.
    sha = hashlib.sha256(weights).hexdigest()
    assert ("POST", "/tester/tiny.git/info/lfs/objects/batch") in hub.requests
    assert [r for r in hub.requests if r[0] == "PUT"] == [("PUT", f"/lfs-upload/{sha}")]
    assert ("POST", "/lfs-verify") in hub.requests
    assert hub.repo_files(repo_id) == {".gitattributes": GITATTRIBUTES, "README.md": README,
                                       "model.safetensors": weights, "sub/config.json": b'{"hidden_size": 64}\n'}
    last = hub.commits(repo_id)[-1]
    assert (last["oid"], last["message"], last["description"]) == (info.oid, "Upload model", "first upload")
    assert last["files"] == ["README.md", "model.safetensors", "sub/config.json"]

    # model_info: sha, cardData (parsed YAML front matter), siblings (+ metadata with files_metadata).
    mi = api.model_info(repo_id)
    assert mi.sha == info.oid and mi.private is False and mi.id == repo_id
    assert mi.card_data["license"] == "apache-2.0" and mi.card_data["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert {"quantized", "w4a16", "license:apache-2.0"} <= set(mi.tags)
    assert sorted(s.rfilename for s in mi.siblings) == [".gitattributes", "README.md", "model.safetensors",
                                                        "sub/config.json"]
    meta = {s.rfilename: s for s in api.model_info(repo_id, files_metadata=True).siblings}
    assert meta["model.safetensors"].lfs.sha256 == sha and meta["model.safetensors"].size == len(weights)
    assert meta["README.md"].lfs is None and meta["README.md"].size == len(README)

    # Tags and refs; model_info at a tag.
    api.create_tag(repo_id, tag="v1", tag_message="first")
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_tag(repo_id, tag="v1")
    assert exc.value.response.status_code == 409
    api.create_tag(repo_id, tag="v1", exist_ok=True)
    refs = api.list_repo_refs(repo_id)
    assert [(b.name, b.ref, b.target_commit) for b in refs.branches] == [("main", "refs/heads/main", info.oid)]
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1", "refs/tags/v1", info.oid)]
    assert hub.tags(repo_id) == {"v1": info.oid}

    # Tree listing: sizes, LFS sha256, blob oids, last commit; paths-info.
    tree = {e.path: e for e in api.list_repo_tree(repo_id, recursive=True, expand=True)}
    assert set(tree) == {".gitattributes", "README.md", "model.safetensors", "sub", "sub/config.json"}
    st = tree["model.safetensors"]
    assert (st.size, st.lfs.sha256, st.lfs.size) == (len(weights), sha, len(weights))
    assert st.last_commit.oid == info.oid and st.last_commit.title == "Upload model"
    assert tree["README.md"].blob_id == hashlib.sha1(b"blob %d\0" % len(README) + README).hexdigest()
    assert tree["README.md"].lfs is None and tree["sub"].tree_id
    assert tree[".gitattributes"].last_commit.title == "initial commit"
    assert [e.path for e in api.list_repo_tree(repo_id)] == ["sub", ".gitattributes", "README.md",
                                                            "model.safetensors"]
    assert [e.path for e in api.list_repo_tree(repo_id, path_in_repo="sub")] == ["sub/config.json"]
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "README.md", "model.safetensors",
                                                    "sub/config.json"]
    paths = api.get_paths_info(repo_id, ["model.safetensors", "sub", "missing.txt"])
    assert [p.path for p in paths] == ["model.safetensors", "sub"] and paths[0].lfs.sha256 == sha
    assert api.file_exists(repo_id, "sub/config.json") and not api.file_exists(repo_id, "nope.bin")

    # snapshot_download reproduces the bytes; cache blobs are named by the ETags (sha256 for LFS, sha1 otherwise).
    cache = tmp_path / "hf-cache"
    snap = snapshot_download(repo_id, endpoint=hub.url, token=hub.token, cache_dir=cache)
    got = {p.relative_to(snap).as_posix(): p.read_bytes() for p in sorted(Path(snap).rglob("*"))
           if p.is_file()}
    assert got == hub.repo_files(repo_id)
    assert load(got["model.safetensors"])["lm_head.weight"].shape == (32, 64)
    blobs = {p.name for p in (cache / "models--tester--tiny" / "blobs").iterdir()}
    assert sha in blobs and tree["README.md"].blob_id in blobs

    snap_dir = snapshot_download(repo_id, endpoint=hub.url, local_dir=tmp_path / "snap", allow_patterns=["*.json"])
    assert (Path(snap_dir) / "sub" / "config.json").read_bytes() == b'{"hidden_size": 64}\n'
    assert not (Path(snap_dir) / "model.safetensors").exists()

    # Second commit (edit + delete + two LFS files uploaded concurrently); the tag keeps the old content.
    readme2 = README.replace(b"w4a16", b"w8a8")
    png, gguf = bytes(range(256)) * 9, b"GGUF" + bytes(5000)
    info2 = api.create_commit(repo_id, operations=[
        CommitOperationAdd("README.md", readme2), CommitOperationDelete("sub/"),
        CommitOperationAdd("images/plot.png", png), CommitOperationAdd("extra.gguf", gguf),
    ], commit_message="Edit card")
    assert hub.commits(repo_id)[-1]["files"] == ["README.md", "extra.gguf", "images/plot.png"]
    assert sum(1 for r in hub.requests if r[0] == "PUT") == 3
    assert hub.repo_files(repo_id)["images/plot.png"] == png
    assert hub.commits(repo_id)[-1]["deleted"] == ["sub/config.json"]
    assert api.model_info(repo_id).card_data["tags"] == ["quantized", "w8a8"]
    assert api.model_info(repo_id, revision="v1").sha == info.oid
    assert api.model_info(repo_id, revision=info.oid[:12]).sha == info.oid
    assert hub.repo_files(repo_id, "v1")["README.md"] == README and "sub/config.json" not in hub.repo_files(repo_id)
    old = hf_hub_download(repo_id, "README.md", revision="v1", endpoint=hub.url, cache_dir=cache)
    new = hf_hub_download(repo_id, "README.md", endpoint=hub.url, local_dir=tmp_path / "local")
    assert open(old, "rb").read() == README and open(new, "rb").read() == readme2
    assert [c.commit_id for c in api.list_repo_commits(repo_id)] == [info2.oid, info.oid,
                                                                    hub.commits(repo_id)[0]["oid"]]


def test_unchanged_files_are_skipped_by_the_client(hub, api, weights):
    # preupload reports each existing file's oid (sha1 regular, sha256 LFS); the client drops no-op additions.
    repo_id = api.create_repo("tester/tiny").repo_id
    first = _first_commit(api, repo_id, weights)
    n_commits = sum(1 for r in hub.requests if r[1].endswith("/commit/main"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = _first_commit(api, repo_id, weights)
    assert again.oid == first.oid
    assert sum(1 for r in hub.requests if r[1].endswith("/commit/main")) == n_commits


def test_not_found_errors(hub, api):
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("tester/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/missing", "README.md", endpoint=hub.url)
    api.create_repo("tester/tiny")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("tester/tiny", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("tester/tiny", "nope.txt", endpoint=hub.url)
    assert not api.repo_exists("tester/missing") and api.repo_exists("tester/tiny")
    api.create_repo("tester/secret", private=True)
    assert api.model_info("tester/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info("tester/secret")


def test_bad_or_missing_token_is_refused_on_write(hub, api):
    api.create_repo("tester/tiny")
    bad = HfApi(endpoint=hub.url, token="hf_not_a_valid_token")
    with pytest.raises(HfHubHTTPError) as exc:
        bad.create_repo("tester/other")
    assert exc.value.response.status_code == 401
    anonymous = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(HfHubHTTPError) as exc:
        anonymous.create_commit("tester/tiny", [CommitOperationAdd("a.txt", b"a")], commit_message="x")
    assert exc.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError, match="Invalid user token"):
        bad.whoami()
    assert anonymous.model_info("tester/tiny").id == "tester/tiny"  # reads need no token
    assert hub.repo_files("tester/tiny") == {".gitattributes": GITATTRIBUTES}


def test_deny_writes_gives_403(hub, api):
    api.create_repo("tester/tiny")
    other = HfApi(endpoint=hub.url, token=OTHER_TOKEN)
    assert other.whoami()["name"] == "other"
    other.create_commit("tester/tiny", [CommitOperationAdd("ok.txt", b"ok")], commit_message="allowed")
    hub.deny_writes("other", "tester")
    with pytest.raises(HfHubHTTPError) as exc:
        other.create_commit("tester/tiny", [CommitOperationAdd("no.txt", b"no")], commit_message="denied")
    assert exc.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as exc:
        other.create_repo("tester/second")
    assert exc.value.response.status_code == 403
    assert other.create_repo("other/mine").repo_id == "other/mine"
    assert sorted(hub.repo_files("tester/tiny")) == [".gitattributes", "ok.txt"]


def test_commit_500_changes_nothing_and_a_retry_succeeds(hub, api, weights):
    repo_id = api.create_repo("tester/tiny").repo_id
    before = hub.repo_files(repo_id)
    hub.fail_next("commit", "500")  # the commit POST is not retried by the client: one failure surfaces
    with pytest.raises(HfHubHTTPError) as exc:
        _first_commit(api, repo_id, weights)
    assert exc.value.response.status_code == 500
    assert hub.repo_files(repo_id) == before and len(hub.commits(repo_id)) == 1
    _first_commit(api, repo_id, weights)
    assert hub.repo_files(repo_id)["model.safetensors"] == weights


def test_lfs_upload_drop_changes_nothing_and_a_retry_succeeds(hub, api, weights):
    repo_id = api.create_repo("tester/tiny").repo_id
    before = hub.repo_files(repo_id)
    hub.fail_next("lfs_upload", "drop", count=RETRY_ATTEMPTS)  # the PUT goes through http_backoff
    with pytest.raises(RuntimeError, match="Error while uploading 'model.safetensors'") as exc:
        _first_commit(api, repo_id, weights)
    assert isinstance(exc.value.__cause__, (httpx.RemoteProtocolError, httpx.NetworkError))
    assert sum(1 for r in hub.requests if r[0] == "PUT") == RETRY_ATTEMPTS
    assert not any(r[1].endswith("/commit/main") for r in hub.requests)
    assert hub.repo_files(repo_id) == before
    _first_commit(api, repo_id, weights)
    assert hub.repo_files(repo_id)["model.safetensors"] == weights


def test_single_5xx_on_retried_endpoints_is_transparent(hub, api, weights):
    repo_id = api.create_repo("tester/tiny").repo_id
    hub.fail_next("preupload", "500")
    hub.fail_next("lfs_batch", "drop")
    _first_commit(api, repo_id, weights)
    assert sum(1 for r in hub.requests if r[1].endswith("/preupload/main")) == 2
    assert sum(1 for r in hub.requests if r[1].endswith("/objects/batch")) == 2
    hub.fail_next("model_info", "500")  # model_info is a plain GET: no retry
    with pytest.raises(HfHubHTTPError):
        api.model_info(repo_id)
    hub.fail_next("download", "drop")  # the metadata HEAD is not retried
    with pytest.raises(httpx.RemoteProtocolError):
        hf_hub_download(repo_id, "README.md", endpoint=hub.url, cache_dir=str(hub.root / "c"))
    assert open(hf_hub_download(repo_id, "README.md", endpoint=hub.url, cache_dir=str(hub.root / "c")),
                "rb").read() == README


def test_resolve_headers_and_ranges(hub, api, weights):
    repo_id = api.create_repo("tester/tiny").repo_id
    info = _first_commit(api, repo_id, weights)
    sha = hashlib.sha256(weights).hexdigest()
    head = httpx.head(f"{hub.url}/{repo_id}/resolve/main/model.safetensors")
    assert head.status_code == 200 and head.headers["x-repo-commit"] == info.oid
    assert head.headers["etag"] == head.headers["x-linked-etag"] == f'"{sha}"'
    assert int(head.headers["x-linked-size"]) == int(head.headers["content-length"]) == len(weights)
    assert not any(k.lower().startswith("x-xet") for k in head.headers)
    head = httpx.head(f"{hub.url}/{repo_id}/resolve/{info.oid}/sub/config.json")
    assert head.headers["etag"] == '"%s"' % hashlib.sha1(b"blob 20\0" + b'{"hidden_size": 64}\n').hexdigest()
    assert "x-linked-etag" not in head.headers
    part = httpx.get(f"{hub.url}/{repo_id}/resolve/main/model.safetensors", headers={"Range": "bytes=8-15"})
    assert part.status_code == 206 and part.content == weights[8:16]
    assert part.headers["content-range"] == f"bytes 8-15/{len(weights)}"
    missing = httpx.head(f"{hub.url}/{repo_id}/resolve/main/nope")
    assert missing.status_code == 404 and missing.headers["x-error-code"] == "EntryNotFound"
    assert missing.headers["x-repo-commit"] == info.oid


def test_parent_commit_mismatch_is_412(hub, api):
    repo_id = api.create_repo("tester/tiny").repo_id
    initial = hub.commits(repo_id)[0]["oid"]
    api.create_commit(repo_id, [CommitOperationAdd("a.txt", b"a")], commit_message="a", parent_commit=initial)
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_commit(repo_id, [CommitOperationAdd("b.txt", b"b")], commit_message="b", parent_commit=initial)
    assert exc.value.response.status_code == 412
    assert sorted(hub.repo_files(repo_id)) == [".gitattributes", "a.txt"]


def test_server_side_commit_is_atomic(hub, api):
    repo_id = api.create_repo("tester/tiny").repo_id
    before = hub.repo_files(repo_id)
    headers = {"authorization": f"Bearer {hub.token}", "content-type": "application/x-ndjson"}

    def commit(*items):
        lines = [{"key": "header", "value": {"summary": "raw", "description": ""}}, *items]
        return httpx.post(f"{hub.url}/api/models/{repo_id}/commit/main", headers=headers,
                          content=b"".join(json.dumps(i).encode() + b"\n" for i in lines))

    ok_file = {"key": "file", "value": {"path": "x.txt", "encoding": "base64",
                                        "content": base64.b64encode(b"x").decode()}}
    r = commit(ok_file, {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "0" * 64, "size": 1}})
    assert r.status_code == 400 and "does not exist" in r.json()["error"]
    r = commit(ok_file, {"key": "deletedFile", "value": {"path": "missing.txt"}})
    assert r.status_code == 404 and r.headers["x-error-code"] == "EntryNotFound"
    r = commit(ok_file, {"key": "file", "value": {"path": "x.txt/y", "encoding": "base64", "content": ""}})
    assert r.status_code == 400
    r = commit({"key": "file", "value": {"path": "README.md", "encoding": "base64",
                                         "content": base64.b64encode(b"---\n[unclosed\n---\n").decode()}})
    assert r.status_code == 400 and "README.md" in r.json()["error"]
    assert hub.repo_files(repo_id) == before and len(hub.commits(repo_id)) == 1
    assert commit(ok_file).json()["commitOid"] == hub.commits(repo_id)[-1]["oid"]


def test_lfs_upload_checks_sha256(hub, api):
    api.create_repo("tester/tiny")
    oid = hashlib.sha256(b"right").hexdigest()
    r = httpx.put(f"{hub.url}/lfs-upload/{oid}", content=b"wrong")
    assert r.status_code == 400 and "sha256 mismatch" in r.json()["error"]
    assert not (hub.root / "lfs" / oid).exists()
    assert httpx.put(f"{hub.url}/lfs-upload/{oid}", content=b"right").status_code == 200
    batch = httpx.post(f"{hub.url}/tester/tiny.git/info/lfs/objects/batch",
                       headers={"authorization": f"Bearer {hub.token}"},
                       json={"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": 5}]})
    assert batch.json()["objects"] == [{"oid": oid, "size": 5}]  # already present: no actions


def test_state_survives_a_restart(tmp_path, monkeypatch):
    patch_hf_client(monkeypatch)
    with FakeHub(tmp_path / "hub") as hub:
        api = HfApi(endpoint=hub.url, token=hub.token)
        api.create_repo("tester/tiny")
        api.upload_file(path_or_fileobj=b"hello", path_in_repo="hello.txt", repo_id="tester/tiny")
        folder = tmp_path / "folder"
        (folder / "nested").mkdir(parents=True)
        (folder / "nested" / "w.safetensors").write_bytes(b"\x00" * 100)
        (folder / "config.json").write_text("{}")
        api.upload_folder(folder_path=folder, repo_id="tester/tiny", path_in_repo="up")
        assert hub.repo_files("tester/tiny")["up/nested/w.safetensors"] == b"\x00" * 100
        assert ("PUT", f"/lfs-upload/{hashlib.sha256(bytes(100)).hexdigest()}") in hub.requests
        port = hub.port
    with FakeHub(tmp_path / "hub", port=port) as again:
        assert again.repo_files("tester/tiny")["hello.txt"] == b"hello"
        assert HfApi(endpoint=again.url).model_info("tester/tiny").sha == again.commits("tester/tiny")[-1]["oid"]


def test_collections_as_huggingface_hub_calls_them(hub, api):
    """create (409 with the slug, which exists_ok reads), get, add (409 when present, 404 for no such repo),
    update (note, position), delete; writes need write access to the collection's namespace."""
    from huggingface_hub.errors import HfHubHTTPError

    for name in ("a", "b", "c"):
        api.create_repo(f"tester/{name}")
    collection = api.create_collection("Tiny low-bit (factory)", namespace="tester", description="the builds")
    assert collection.slug.startswith("tester/tiny-low-bit-factory-") and collection.items == []
    with pytest.raises(HfHubHTTPError) as raised:
        api.create_collection("Tiny low-bit (factory)", namespace="tester")
    assert raised.value.response.status_code == 409
    assert api.create_collection("Tiny low-bit (factory)", namespace="tester", exists_ok=True).slug == collection.slug
    for name in ("a", "b", "c"):
        api.add_collection_item(collection.slug, f"tester/{name}", "model", note=f"note {name}")
    with pytest.raises(HfHubHTTPError) as raised:
        api.add_collection_item(collection.slug, "tester/a", "model")
    assert raised.value.response.status_code == 409
    api.add_collection_item(collection.slug, "tester/a", "model", exists_ok=True)
    with pytest.raises(HfHubHTTPError) as raised:
        api.add_collection_item(collection.slug, "tester/nothing", "model")
    assert raised.value.response.status_code == 404
    items = api.get_collection(collection.slug).items
    assert [(i.item_id, i.position, i.note) for i in items] == [("tester/a", 0, "note a"), ("tester/b", 1, "note b"),
                                                              ("tester/c", 2, "note c")]
    api.update_collection_item(collection.slug, items[2].item_object_id, note="new", position=0)
    api.delete_collection_item(collection.slug, items[1].item_object_id)
    items = api.get_collection(collection.slug).items
    assert [(i.item_id, i.position, i.note) for i in items] == [("tester/c", 0, "new"), ("tester/a", 1, "note a")]
    api.delete_collection_item(collection.slug, items[0].item_object_id)
    api.delete_collection_item(collection.slug, "0" * 24, missing_ok=True)
    with pytest.raises(HfHubHTTPError) as raised:
        api.get_collection("tester/no-such-collection-" + "0" * 24)
    assert raised.value.response.status_code == 404
    hub.deny_writes("tester", "tester")
    with pytest.raises(HfHubHTTPError) as raised:
        api.add_collection_item(collection.slug, "tester/b", "model")
    assert raised.value.response.status_code == 403
