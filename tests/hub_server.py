"""A small Hugging Face Hub-compatible HTTP server for the test suite (standard library + PyYAML only).

`FakeHub` speaks enough of the Hub's wire protocol for huggingface_hub's *real* client (HfApi.create_repo,
create_commit with Git LFS, model_info, list_repo_tree, get_paths_info, create_tag, list_repo_refs,
hf_hub_download, snapshot_download, ...) to work against it. The formats follow huggingface_hub 1.33's source:

* ``POST /api/repos/create`` -> ``{"url": ...}``; 409 *with* a ``url`` in the body when the repo exists (create_repo
  calls ``r.json()["url"]`` even after swallowing the 409 for ``exist_ok=True``).
* ``POST /api/validate-yaml`` (create_commit checks README.md front matter there first).
* ``POST /api/models/{repo}/preupload/{rev}`` -> ``{"files": [{"path", "uploadMode", "shouldIgnore", "oid"}]}``;
  ``oid`` is the file's current oid at ``rev`` (git blob sha1 for regular files, sha256 for LFS files), which is what
  the client compares with its local oid to drop no-op additions.
* ``POST /{repo}.git/info/lfs/objects/batch`` (Git LFS batch API, "basic" transfer) -> an ``upload`` action whose href
  is ``PUT /lfs-upload/{sha256}`` on this server plus a ``verify`` action; no ``chunk_size`` header, so the client
  never uses multipart. Objects already stored come back without actions (the client skips them).
* ``POST /api/models/{repo}/commit/{rev}``: NDJSON (header / file / lfsFile / deletedFile / deletedFolder), applied
  atomically -> ``{"commitUrl", "commitOid", "pullRequestUrl": null}``.
* ``GET|HEAD /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, a quoted ``ETag`` (git blob sha1 for regular files,
  sha256 for LFS files, the latter also as ``X-Linked-Etag`` with ``X-Linked-Size``), ``Content-Length`` and ranges.
  LFS files are served directly (no redirect to a CDN host). No ``X-Xet-*`` header is ever sent, so downloads never
  take the Xet path.

* Collections, as huggingface_hub 1.33's HfApi calls them: ``POST /api/collections`` ({title, namespace, private,
  description}) -> the collection; 409 with its ``slug`` in the body when the namespace already has one of that title
  (what ``create_collection(exists_ok=True)`` reads); ``GET /api/collections/{slug}``; ``POST .../{slug}/items``
  ({item: {id, type}, note}) -> the collection, 409 when the item is in it already, 404 for a repo that does not exist;
  ``PATCH .../{slug}/items/{_id}`` ({note?, position?}); ``DELETE .../{slug}/items/{_id}``. A collection is
  ``{slug, title, owner, items: [{_id, id, type, position, note: {text, html}}], lastUpdated, position, private,
  theme, upvotes, description}``; writes need write access to its namespace (403 otherwise, as for repos).

Differences from the real Hub worth knowing:

* Model and dataset repos; space URLs get 404 with a message saying so. A dataset repo is served under
  ``/api/datasets/...`` and ``/datasets/{repo}/resolve/...`` exactly as a model repo is (its info is the model
  info's shape); the test helpers (``repo_files``, ``commits``, ...) name it ``datasets/{namespace}/{name}``.
* A new repo gets an "initial commit" holding ``.gitattributes``, as on the Hub (so ``model_info().sha`` exists).
* Upload mode: "lfs" for ``*.safetensors``, ``*.png``, ``*.bin``, ``*.gguf`` or files >= 10 MB, else "regular".
* Any request carrying an unknown token gets 401 (as on the Hub); reads need no token; a private repo is visible to
  any valid token. Writes need a valid token; every user may write everywhere except where ``deny_writes`` says no.
* No pull requests, no pagination, no Xet, no multipart LFS.

Client-side setup (huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_DISABLE_XET at import time):
``patch_hf_client(monkeypatch, hub.url)`` for the current process, ``hub.client_env()`` for subprocesses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

DEFAULT_TOKEN = "hf_test_token_0123456789"
DEFAULT_USERS = {DEFAULT_TOKEN: "tester"}

ACTIONS = ("create_repo", "preupload", "lfs_batch", "lfs_upload", "commit", "tag", "model_info", "download",
           "collection")
FAULT_MODES = ("500", "drop")

LFS_SUFFIXES = (".safetensors", ".png", ".bin", ".gguf")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

GITATTRIBUTES = b"".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n".encode() for suffix in LFS_SUFFIXES
)

_REPO_PART = re.compile(r"^[\w\-.]{1,96}$")
_YAML_BLOCK = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SHORT_OID = re.compile(r"^[0-9a-f]{7,40}$")
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class HubError(Exception):
    """An HTTP error answer: status, message, optional X-Error-Code, extra headers and body fields."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}
        self.body = body


class _Dropped(Exception):
    """Fault injection: close the connection without answering."""


# ------------------------------------------------------------------ helpers


def _now() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def card_data_of(readme: bytes) -> dict | None:
    """The YAML front matter of a README as a dict; None when absent. Raises ValueError if it is not valid YAML."""
    match = _YAML_BLOCK.search(readme.decode("utf-8", errors="replace"))
    if match is None:
        return None
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as exc:
        raise ValueError(f"Invalid YAML in README.md metadata: {exc}") from None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError("README.md metadata must be a YAML mapping")
    return data


def _check_path(path: Any) -> str:
    if not isinstance(path, str) or not path:
        raise HubError(400, f"Invalid path in repo: {path!r}")
    if path.startswith("./"):
        path = path[2:]
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts) or parts[0] == ".git" or "\\" in path:
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _valid_repo_part(part: Any) -> bool:
    return (isinstance(part, str) and bool(_REPO_PART.match(part)) and "--" not in part and ".." not in part
            and not part.startswith(("-", ".")) and not part.endswith(("-", ".", ".git")))


def _check_ref_name(name: Any, what: str) -> str:
    if (not isinstance(name, str) or not name or len(name) > 255 or any(c.isspace() for c in name)
            or name.startswith(("-", "/", ".")) or name.endswith(("/", ".", ".lock")) or ".." in name
            or any(c in name for c in "~^:?*[\\")):
        raise HubError(400, f"Invalid {what} name: {name!r}")
    return name


class FakeHub:
    """A Hub-compatible HTTP server on 127.0.0.1, storing repos under `root`. See the module docstring."""

    def __init__(self, root: Path, port: int = 0, users: dict[str, str] | None = None):
        self.root = Path(root)
        self.users: dict[str, str] = dict(users) if users is not None else dict(DEFAULT_USERS)
        if not self.users:
            raise ValueError("FakeHub needs at least one user (token -> username)")
        self.token: str = next(iter(self.users))
        self.requests: list[tuple[str, str]] = []
        self._port = port
        self._lock = threading.RLock()
        self._faults: dict[str, deque[str]] = {a: deque() for a in ACTIONS}
        self._denied: set[tuple[str, str]] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._counter = 0
        (self.root / "lfs").mkdir(parents=True, exist_ok=True)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        self._state_file = self.root / "state.json"
        self._repos: dict[str, dict] = {}
        self._collections: dict[str, dict] = {}  # slug -> the collection, in the Hub's JSON shape
        if self._state_file.is_file():
            state = json.loads(self._state_file.read_text())
            self._repos = state["repos"]
            self._collections = state.get("collections", {})

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        if self._server is None and not self._port:
            raise RuntimeError("FakeHub is not started: call start() first")
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> "FakeHub":
        if self._server is not None:
            return self
        hub = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def process_request(self, request, client_address):
                with hub._lock:
                    hub._connections.add(request)
                super().process_request(request, client_address)

            def shutdown_request(self, request):
                with hub._lock:
                    hub._connections.discard(request)
                super().shutdown_request(request)

        # A restarted hub keeps its port, so clients configured with its URL still reach it.
        self._server = Server(("127.0.0.1", self._port), _make_handler(self))
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"FakeHub:{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        # Close kept-alive connections too, so no handler of this instance answers a pooled client connection later.
        with self._lock:
            conns, self._connections = list(self._connections), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client_env(self) -> dict[str, str]:
        """Environment for a subprocess using huggingface_hub against this hub (read at its import)."""
        return {"HF_ENDPOINT": self.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": self.token}

    # ------------------------------------------------------------ test controls

    def fail_next(self, action: str, mode: str = "500", count: int = 1) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; expected one of {ACTIONS}")
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {FAULT_MODES}")
        with self._lock:
            self._faults[action].extend([mode] * count)

    def clear_faults(self) -> None:
        """Forget faults that no request has consumed yet."""
        with self._lock:
            for queue in self._faults.values():
                queue.clear()

    def deny_writes(self, username: str, namespace: str) -> None:
        with self._lock:
            self._denied.add((username, namespace.lower()))

    def repo_files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self._lock:
            repo = self._repo_or_keyerror(repo_id)
            oid = self._resolve(repo, revision)
            if oid is None:
                raise KeyError(f"{repo_id}: unknown revision {revision!r}")
            tree = dict(repo["commits"][oid]["tree"])
        return {path: self._read_blob(entry) for path, entry in sorted(tree.items())}

    def commits(self, repo_id: str) -> list[dict]:
        with self._lock:
            repo = self._repo_or_keyerror(repo_id)
            return [
                {key: (list(c[key]) if isinstance(c[key], list) else c[key])
                 for key in ("oid", "message", "description", "files", "deleted", "parents", "author", "date")}
                for c in (repo["commits"][oid] for oid in repo["order"])
            ]

    def collections(self, namespace: str | None = None) -> list[dict]:
        """Every collection (of one namespace), as the API returns it."""
        with self._lock:
            return [json.loads(json.dumps(c)) for c in self._collections.values()
                    if namespace is None or c["owner"]["name"].lower() == namespace.lower()]

    def tags(self, repo_id: str) -> dict[str, str]:
        with self._lock:
            repo = self._repo_or_keyerror(repo_id)
            return {name: tag["oid"] for name, tag in repo["tags"].items()}

    def branches(self, repo_id: str) -> dict[str, str]:
        with self._lock:
            return dict(self._repo_or_keyerror(repo_id)["branches"])

    # ------------------------------------------------------------ state helpers (callers hold the lock)

    # Dataset repos are stored under the key "datasets/{namespace}/{name}"; model repos under their id.

    @staticmethod
    def _namespace(key: str) -> str:
        return key.removeprefix("datasets/").split("/")[0]

    @staticmethod
    def _web_path(repo: dict) -> str:
        return ("datasets/" if repo.get("type") == "dataset" else "") + repo["id"]

    def _repo_or_keyerror(self, repo_id: str) -> dict:
        repo = self._find(repo_id)
        if repo is None:
            raise KeyError(f"no repo {repo_id!r} on this FakeHub")
        return repo

    def _find(self, repo_id: str) -> dict | None:
        repo = self._repos.get(repo_id)
        if repo is None:
            lowered = repo_id.lower()
            repo = next((r for key, r in self._repos.items() if key.lower() == lowered), None)
        return repo

    def _resolve(self, repo: dict, revision: str) -> str | None:
        """Branch, tag, refs/heads/x, refs/tags/x or a (possibly abbreviated) commit oid -> commit oid."""
        if revision.startswith("refs/heads/"):
            return repo["branches"].get(revision[len("refs/heads/"):])
        if revision.startswith("refs/tags/"):
            tag = repo["tags"].get(revision[len("refs/tags/"):])
            return tag["oid"] if tag else None
        if revision in repo["branches"]:
            return repo["branches"][revision]
        if revision in repo["tags"]:
            return repo["tags"][revision]["oid"]
        rev = revision.lower()
        if rev in repo["commits"]:
            return rev
        if _SHORT_OID.match(rev):
            found = [oid for oid in repo["commits"] if oid.startswith(rev)]
            if len(found) == 1:
                return found[0]
        return None

    def _save(self) -> None:
        tmp = self._state_file.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps({"repos": self._repos, "collections": self._collections}))
        os.replace(tmp, self._state_file)

    def _blob_path(self, entry: dict) -> Path:
        return self.root / ("lfs" if entry["lfs"] else "blobs") / entry["sha256"]

    def _read_blob(self, entry: dict) -> bytes:
        return self._blob_path(entry).read_bytes()

    def _new_oid(self, *parts: str) -> str:
        self._counter += 1
        payload = "\n".join([*parts, str(time.time_ns()), str(self._counter), uuid.uuid4().hex])
        return hashlib.sha1(payload.encode()).hexdigest()

    def _store_regular(self, content: bytes) -> dict:
        sha = hashlib.sha256(content).hexdigest()
        path = self.root / "blobs" / sha
        if not path.exists():
            tmp = self.root / "tmp" / uuid.uuid4().hex
            tmp.write_bytes(content)
            os.replace(tmp, path)
        return {"sha256": sha, "size": len(content), "lfs": False, "blob_id": git_blob_sha1(content)}

    def _make_commit(self, repo: dict, branch: str, tree: dict, message: str, description: str,
                     author: str, files: list[str], deleted: list[str]) -> str:
        parent = repo["branches"].get(branch)
        oid = self._new_oid(repo["id"], parent or "", message)
        repo["commits"][oid] = {
            "oid": oid, "parents": [parent] if parent else [], "message": message, "description": description,
            "author": author, "date": _now(), "tree": tree, "files": sorted(files), "deleted": sorted(deleted),
        }
        repo["order"].append(oid)
        repo["branches"][branch] = oid
        return oid

    # ------------------------------------------------------------ tree views

    def _card_data(self, repo: dict, oid: str) -> dict | None:
        entry = repo["commits"][oid]["tree"].get("README.md")
        if entry is None:
            return None
        try:
            return card_data_of(self._read_blob(entry))
        except ValueError:
            return None

    def _last_commit(self, repo: dict, head: str, path: str, is_dir: bool) -> dict:
        oid = head
        while True:
            commit = repo["commits"][oid]
            touched = commit["files"] + commit["deleted"]
            if (any(p.startswith(path + "/") for p in touched) if is_dir else path in touched) \
                    or not commit["parents"]:
                return {"id": oid, "title": commit["message"], "date": commit["date"]}
            oid = commit["parents"][0]

    def _file_entry(self, repo: dict, head: str, path: str, entry: dict, expand: bool) -> dict:
        out: dict[str, Any] = {"type": "file", "path": path, "size": entry["size"], "oid": entry["blob_id"]}
        if entry["lfs"]:
            out["lfs"] = {"oid": entry["sha256"], "size": entry["size"],
                          "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"]))}
        if expand:
            out["lastCommit"] = self._last_commit(repo, head, path, is_dir=False)
            out["securityFileStatus"] = {"status": "safe", "avScan": {"virusFound": False, "virusNames": None},
                                         "pickleImportScan": None}
        return out

    def _dir_entry(self, repo: dict, head: str, path: str, tree: dict, expand: bool) -> dict:
        listing = sorted(f"{p} {e['blob_id']}" for p, e in tree.items() if p.startswith(path + "/"))
        out: dict[str, Any] = {"type": "directory", "path": path, "size": 0,
                               "oid": hashlib.sha1("\n".join(listing).encode()).hexdigest()}
        if expand:
            out["lastCommit"] = self._last_commit(repo, head, path, is_dir=True)
        return out

    @staticmethod
    def _dirs_of(tree: dict) -> set[str]:
        dirs = set()
        for path in tree:
            parts = path.split("/")
            for i in range(1, len(parts)):
                dirs.add("/".join(parts[:i]))
        return dirs

    # ------------------------------------------------------------ request handling

    def _user(self, headers) -> str | None:
        """The username for a valid bearer token, None without one; 401 for an unknown token."""
        auth = headers.get("Authorization")
        if not auth:
            return None
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self.users:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.users[token.strip()]

    def _writer(self, headers, namespace: str) -> str:
        user = self._user(headers)
        if user is None:
            raise HubError(401, "You must be authenticated to perform this action (no token sent)")
        with self._lock:
            denied = (user, namespace.lower()) in self._denied
        if denied:
            raise HubError(403, f"You don't have the rights to write to repos under the namespace '{namespace}'")
        return user

    def _repo_for_read(self, headers, repo_id: str) -> dict:
        user = self._user(headers)
        repo = self._find(repo_id)
        if repo is None or (repo["private"] and user is None):
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return repo

    def _repo_for_write(self, headers, repo_id: str) -> tuple[dict, str]:
        user = self._writer(headers, self._namespace(repo_id))
        repo = self._find(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return repo, user

    def _revision(self, repo: dict, revision: str) -> str:
        oid = self._resolve(repo, revision)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return oid

    def _branch(self, repo: dict, revision: str) -> str:
        """A revision that must be a branch (commits and preuploads go to branches)."""
        branch = revision[len("refs/heads/"):] if revision.startswith("refs/heads/") else revision
        if branch not in repo["branches"]:
            if self._resolve(repo, revision) is not None:
                raise HubError(400, f"Revision {revision!r} is not a branch; can only commit to a branch")
            raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return branch

    def _take_fault(self, action: str | None) -> str | None:
        if action is None:
            return None
        with self._lock:
            queue = self._faults[action]
            return queue.popleft() if queue else None

    # ---- endpoints. Each returns (status, body, headers); body is bytes, a JSON-able object, or a Path to stream.

    def api_whoami(self, req) -> Any:
        user = self._user(req.headers)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return {"type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user, "fullname": user,
                "email": f"{user}@example.invalid", "emailVerified": True, "isPro": False, "orgs": [],
                "auth": {"type": "access_token",
                         "accessToken": {"displayName": "fakehub", "role": "write", "createdAt": _now()}}}

    def api_create_repo(self, req) -> Any:
        payload = req.json()
        user = self._user(req.headers)
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        repo_type = payload.get("type") or "model"
        if repo_type not in ("model", "dataset"):
            raise HubError(404, f"FakeHub only serves model and dataset repos; cannot create a {repo_type!r} repo")
        prefix = "datasets/" if repo_type == "dataset" else ""
        name, namespace = payload.get("name"), payload.get("organization") or user
        self._writer(req.headers, namespace)
        if not (_valid_repo_part(name) and _valid_repo_part(namespace)):
            raise HubError(400, f"Invalid repo name {namespace}/{name}: use letters, digits, '-', '_' and '.' "
                                "(max 96 characters, no '--' or '..', not starting or ending with '-' or '.')")
        repo_id = f"{namespace}/{name}"
        private = bool(payload.get("private")) or payload.get("visibility") in ("private", "protected")
        with self._lock:
            existing = self._find(prefix + repo_id)
            if existing is not None:
                raise HubError(409, f"You already created this {repo_type} repo",
                               body={"url": f"{self.url}/{self._web_path(existing)}"})
            repo = {"id": repo_id, "private": private, "createdAt": _now(), "commits": {}, "order": [],
                    "branches": {}, "tags": {}, **({"type": "dataset"} if prefix else {})}
            entry = self._store_regular(GITATTRIBUTES)
            self._make_commit(repo, "main", {".gitattributes": entry}, "initial commit", "", user,
                              [".gitattributes"], [])
            self._repos[prefix + repo_id] = repo
            self._save()
        return {"url": f"{self.url}/{prefix}{repo_id}", "name": repo_id,
                "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]}

    def api_delete_repo(self, req) -> Any:
        payload = req.json()
        user = self._user(req.headers)
        if user is None:
            raise HubError(401, "You must be authenticated to delete a repo")
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload.get('name')}"
        self._writer(req.headers, namespace)
        repo_type = payload.get("type") or "model"
        key = ("datasets/" if repo_type == "dataset" else "") + repo_id
        with self._lock:
            repo = self._find(key) if repo_type in ("model", "dataset") else None
            if repo is None:
                raise HubError(404, "Repository not found", code="RepoNotFound")
            del self._repos[next(k for k, r in self._repos.items() if r is repo)]
            self._save()
        return {}

    # ---- collections

    def api_create_collection(self, req) -> Any:
        payload = req.json()
        title, namespace = payload.get("title"), payload.get("namespace")
        if not isinstance(title, str) or not title.strip() or not isinstance(namespace, str):
            raise HubError(400, "A collection needs a title and a namespace")
        self._writer(req.headers, namespace)
        description = payload.get("description")
        if description is not None and len(description) > 150:
            raise HubError(400, "Too big: expected string to have <150 characters at description")
        with self._lock:
            for collection in self._collections.values():
                if collection["owner"]["name"].lower() == namespace.lower() and collection["title"] == title:
                    raise HubError(409, "You already have a collection with this title",
                                   body={"slug": collection["slug"]})
            words = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "collection"
            slug = f"{namespace}/{words}-{self._new_oid('collection', namespace, title)[:24]}"
            collection = {"slug": slug, "title": title, "description": description,
                          "owner": {"name": namespace, "type": "user"}, "items": [], "lastUpdated": _now(),
                          "position": len(self._collections), "private": bool(payload.get("private")),
                          "theme": "default", "upvotes": 0}
            self._collections[slug] = collection
            self._save()
            return json.loads(json.dumps(collection))

    def _collection(self, slug: str) -> dict:
        collection = self._collections.get(slug)
        if collection is None:
            raise HubError(404, f"Collection {slug} not found")
        return collection

    def api_get_collection(self, req, slug: str) -> Any:
        with self._lock:
            return json.loads(json.dumps(self._collection(slug)))

    def _collection_for_write(self, req, slug: str) -> dict:
        collection = self._collection(slug)
        self._writer(req.headers, collection["owner"]["name"])
        return collection

    @staticmethod
    def _renumber(collection: dict) -> None:
        for index, item in enumerate(collection["items"]):
            item["position"] = index
        collection["lastUpdated"] = _now()

    def api_add_collection_item(self, req, slug: str) -> Any:
        payload = req.json()
        item = payload.get("item") or {}
        item_id, item_type = item.get("id"), item.get("type")
        note = payload.get("note")
        if note is not None and len(note) > 500:
            raise HubError(400, "Too big: expected string to have <500 characters at note")
        with self._lock:
            collection = self._collection_for_write(req, slug)
            if item_type not in ("model", "dataset"):
                raise HubError(400, f"FakeHub collections hold model and dataset repos, not {item_type!r}")
            if self._find(("datasets/" if item_type == "dataset" else "") + str(item_id)) is None:
                raise HubError(404, f"{item_type} {item_id} not found", code="RepoNotFound")
            if any(i["id"] == item_id and i["type"] == item_type for i in collection["items"]):
                raise HubError(409, f"{item_id} is already in the collection")
            collection["items"].append({"_id": self._new_oid("item", slug, item_id)[:24], "id": item_id,
                                        "type": item_type, "position": len(collection["items"]),
                                        **({"note": {"text": note, "html": note}} if note is not None else {})})
            self._renumber(collection)
            self._save()
            return json.loads(json.dumps(collection))

    def _item(self, collection: dict, object_id: str) -> dict:
        item = next((i for i in collection["items"] if i["_id"] == object_id), None)
        if item is None:
            raise HubError(404, f"Item {object_id} not found in the collection")
        return item

    def api_update_collection_item(self, req, slug: str, object_id: str) -> Any:
        payload = req.json()
        with self._lock:
            collection = self._collection_for_write(req, slug)
            item = self._item(collection, object_id)
            if "note" in payload:
                note = payload["note"]
                if len(note) > 500:
                    raise HubError(400, "Too big: expected string to have <500 characters at note")
                item["note"] = {"text": note, "html": note}
            if "position" in payload:
                collection["items"].remove(item)
                collection["items"].insert(max(0, int(payload["position"])), item)
            self._renumber(collection)
            self._save()
        return {"success": True}

    def api_delete_collection_item(self, req, slug: str, object_id: str) -> Any:
        with self._lock:
            collection = self._collection_for_write(req, slug)
            collection["items"].remove(self._item(collection, object_id))
            self._renumber(collection)
            self._save()
        return {"success": True}

    def api_validate_yaml(self, req) -> Any:
        content = req.json().get("content") or ""
        try:
            data = card_data_of(content.encode())
        except ValueError as exc:
            return 400, {"errors": [{"message": str(exc)}], "warnings": []}, {}
        warnings = [] if data else [{"message": "empty or missing yaml metadata in repo card"}]
        return {"errors": [], "warnings": warnings}

    def api_model_info(self, req, repo_id: str, revision: str | None) -> Any:
        with self._lock:
            repo = self._repo_for_read(req.headers, repo_id)
            oid = self._revision(repo, revision or "main")
            commit = repo["commits"][oid]
            tree = dict(commit["tree"])
            card = self._card_data(repo, oid)
        blobs = req.query.get("blobs", ["false"])[-1].lower() in ("1", "true")
        siblings = []
        for path, entry in sorted(tree.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry["size"], blobId=entry["blob_id"])
                if entry["lfs"]:
                    sibling["lfs"] = {"sha256": entry["sha256"], "size": entry["size"],
                                      "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"]))}
            siblings.append(sibling)
        tags = []
        if card:
            card_tags = card.get("tags")
            tags += [card_tags] if isinstance(card_tags, str) else [str(t) for t in card_tags or []]
            if card.get("library_name"):
                tags.append(str(card["library_name"]))
            if card.get("license"):
                tags.append(f"license:{card['license']}")
        tags.append("region:us")
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo["id"].encode()).hexdigest()[:24], "id": repo["id"], "modelId": repo["id"],
            "author": repo["id"].split("/")[0], "sha": oid, "lastModified": commit["date"],
            "createdAt": repo["createdAt"], "private": repo["private"], "gated": False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": tags, "siblings": siblings, "spaces": [],
            "usedStorage": sum(e["size"] for e in tree.values()),
        }
        if card is not None:
            info["cardData"] = card
            for key in ("library_name", "pipeline_tag"):
                if card.get(key):
                    info[key] = card[key]
        expand = req.query.get("expand", []) + req.query.get("expand[]", [])
        if expand:
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
        return info

    def api_refs(self, req, repo_id: str) -> Any:
        with self._lock:
            repo = self._repo_for_read(req.headers, repo_id)
            out: dict[str, Any] = {
                "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
                             for b, oid in sorted(repo["branches"].items())],
                "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": tag["oid"]}
                         for t, tag in sorted(repo["tags"].items())],
                "converts": [],
            }
        if req.query.get("include_prs"):
            out["pullRequests"] = []
        return out

    def api_commits(self, req, repo_id: str, revision: str) -> Any:
        with self._lock:
            repo = self._repo_for_read(req.headers, repo_id)
            oid: str | None = self._revision(repo, revision)
            out = []
            while oid:
                c = repo["commits"][oid]
                out.append({"id": oid, "authors": [{"user": c["author"]}], "date": c["date"], "title": c["message"],
                            "message": c["description"], "formatted": {"title": c["message"],
                                                                       "message": c["description"]}})
                oid = c["parents"][0] if c["parents"] else None
        return out

    def api_tree(self, req, repo_id: str, revision: str, path: str) -> Any:
        recursive = req.query.get("recursive", ["false"])[-1].lower() in ("1", "true")
        expand = req.query.get("expand", ["false"])[-1].lower() in ("1", "true")
        path = path.strip("/")
        with self._lock:
            repo = self._repo_for_read(req.headers, repo_id)
            head = self._revision(repo, revision)
            tree = repo["commits"][head]["tree"]
            dirs = self._dirs_of(tree)
            if path and path not in dirs:
                raise HubError(404, f"Entry not found: {path!r} is not a folder at {revision}", code="EntryNotFound",
                               headers={"X-Repo-Commit": head})
            prefix = path + "/" if path else ""
            out = []
            for d in sorted(dirs):
                if d.startswith(prefix) and (recursive or "/" not in d[len(prefix):]):
                    out.append(self._dir_entry(repo, head, d, tree, expand))
            for p, entry in sorted(tree.items()):
                if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):]):
                    out.append(self._file_entry(repo, head, p, entry, expand))
        return 200, out, {"X-Repo-Commit": head}

    def api_paths_info(self, req, repo_id: str, revision: str) -> Any:
        if "json" in (req.headers.get("Content-Type") or ""):
            payload = req.json()
            paths, expand = payload.get("paths") or [], payload.get("expand")
            paths = [paths] if isinstance(paths, str) else paths
            expand = expand in (True, "true", "1", 1)
        else:
            form = parse_qs(req.body.decode(), keep_blank_values=True)
            paths = form.get("paths", []) + form.get("paths[]", [])
            expand = form.get("expand", ["false"])[-1].lower() in ("1", "true")
        with self._lock:
            repo = self._repo_for_read(req.headers, repo_id)
            head = self._revision(repo, revision)
            tree = repo["commits"][head]["tree"]
            dirs = self._dirs_of(tree)
            out = []
            for p in dict.fromkeys(str(p).strip("/") for p in paths):
                if p in tree:
                    out.append(self._file_entry(repo, head, p, tree[p], expand))
                elif p in dirs:
                    out.append(self._dir_entry(repo, head, p, tree, expand))
        return 200, out, {"X-Repo-Commit": head}

    def api_preupload(self, req, repo_id: str, revision: str) -> Any:
        payload = req.json()
        if req.query.get("create_pr"):
            raise HubError(400, "FakeHub does not support pull requests (create_pr)")
        with self._lock:
            repo, _ = self._repo_for_write(req.headers, repo_id)
            branch = self._branch(repo, revision)
            head = repo["branches"][branch]
            tree = repo["commits"][head]["tree"]
            files = payload.get("files")
            if not isinstance(files, list):
                raise HubError(400, "preupload: 'files' must be a list")
            out = []
            for item in files:
                path = _check_path(item.get("path") if isinstance(item, dict) else None)
                size = item.get("size")
                if not isinstance(size, int) or size < 0:
                    raise HubError(400, f"preupload: invalid size for {path!r}")
                lfs = path.lower().endswith(LFS_SUFFIXES) or size >= LFS_SIZE_THRESHOLD
                info: dict[str, Any] = {"path": path, "uploadMode": "lfs" if lfs else "regular",
                                        "shouldIgnore": False}
                existing = tree.get(path)
                if existing is not None:
                    info["oid"] = existing["sha256"] if existing["lfs"] else existing["blob_id"]
                out.append(info)
        return {"files": out, "commitOid": head}

    def lfs_batch(self, req, repo_id: str) -> Any:
        payload = req.json()
        with self._lock:
            self._repo_for_write(req.headers, repo_id)
        if payload.get("operation") != "upload":
            raise HubError(400, "FakeHub's LFS batch endpoint only supports operation 'upload'")
        transfers = payload.get("transfers") or ["basic"]
        if "basic" not in transfers:
            raise HubError(400, f"FakeHub only supports the 'basic' LFS transfer (client offered {transfers})")
        objects = []
        for obj in payload.get("objects") or []:
            oid, size = obj.get("oid"), obj.get("size")
            if not (isinstance(oid, str) and _HEX64.match(oid)) or not isinstance(size, int) or size < 0:
                objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid oid or size"}})
                continue
            stored = self.root / "lfs" / oid
            if stored.is_file() and stored.stat().st_size == size:
                objects.append({"oid": oid, "size": size})
                continue
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                "upload": {"href": f"{self.url}/lfs-upload/{oid}?size={size}", "expires_in": 3600},
                "verify": {"href": f"{self.url}/lfs-verify", "expires_in": 3600},
            }})
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, \
            {"Content-Type": "application/vnd.git-lfs+json"}

    def lfs_upload(self, req, oid: str) -> Any:
        tmp = req.body_file
        assert tmp is not None
        try:
            if req.body_sha256 != oid:
                raise HubError(400, f"sha256 mismatch: content hashes to {req.body_sha256}, not {oid}")
            expected = req.query.get("size", [None])[-1]
            if expected is not None and int(expected) != req.body_size:
                raise HubError(400, f"size mismatch: got {req.body_size} bytes, expected {expected}")
            os.replace(tmp, self.root / "lfs" / oid)
        finally:
            tmp.unlink(missing_ok=True)
        return 200, b"", {"ETag": f'"{oid}"'}

    def lfs_verify(self, req) -> Any:
        self._user(req.headers)
        payload = req.json()
        oid, size = payload.get("oid"), payload.get("size")
        stored = self.root / "lfs" / oid if isinstance(oid, str) and _HEX64.match(oid) else None
        if stored is None or not stored.is_file():
            raise HubError(404, f"LFS object {oid} not found")
        if isinstance(size, int) and stored.stat().st_size != size:
            raise HubError(422, f"LFS object {oid} has size {stored.stat().st_size}, not {size}")
        return {}

    def api_commit(self, req, repo_id: str, revision: str) -> Any:
        if req.query.get("create_pr"):
            raise HubError(400, "FakeHub does not support pull requests (create_pr)")
        lines = [line for line in req.body.decode("utf-8").splitlines() if line.strip()]
        try:
            items = [json.loads(line) for line in lines]
        except json.JSONDecodeError as exc:
            raise HubError(400, f"Malformed NDJSON commit payload: {exc}") from None
        if not items or not isinstance(items[0], dict) or items[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a 'header' item")
        header = items[0].get("value") or {}
        summary = header.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            raise HubError(400, "A commit summary (message) is required")
        description = header.get("description") or ""

        # Decode regular files outside the lock; build and check the new tree under it, then swap it in at once.
        ops: list[tuple[str, str, Any]] = []
        for item in items[1:]:
            if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
                raise HubError(400, f"Malformed commit item: {item!r:.200}")
            key, value = item.get("key"), item["value"]
            raw_path = value.get("path")
            if key == "deletedFolder" and isinstance(raw_path, str):
                raw_path = raw_path.rstrip("/")
            path = _check_path(raw_path)
            if key == "file":
                encoding = value.get("encoding", "base64")
                content = value.get("content", "")
                try:
                    data = base64.b64decode(content, validate=True) if encoding == "base64" else content.encode()
                except (ValueError, TypeError):
                    raise HubError(400, f"Invalid base64 content for {path!r}") from None
                if path == "README.md":
                    try:
                        card_data_of(data)
                    except ValueError as exc:
                        raise HubError(400, f"Invalid metadata in README.md: {exc}") from None
                ops.append(("file", path, data))
            elif key == "lfsFile":
                oid = value.get("oid")
                if value.get("algo", "sha256") != "sha256" or not (isinstance(oid, str) and _HEX64.match(oid)):
                    raise HubError(400, f"Invalid LFS oid for {path!r}: {oid!r}")
                ops.append(("lfsFile", path, value))
            elif key in ("deletedFile", "deletedFolder"):
                ops.append((key, path, None))
            else:
                raise HubError(400, f"Unknown commit item key {key!r}")

        with self._lock:
            repo, user = self._repo_for_write(req.headers, repo_id)
            branch = self._branch(repo, revision)
            head = repo["branches"][branch]
            parent = header.get("parentCommit")
            if parent is not None and not (isinstance(parent, str) and len(parent) >= 5
                                           and head.startswith(parent.lower())):
                raise HubError(412, f"The branch {branch!r} head is {head}, not the given parentCommit {parent}")
            tree = dict(repo["commits"][head]["tree"])
            changed: dict[str, None] = {}
            deleted: dict[str, None] = {}
            pending: list[tuple[str, bytes]] = []
            for kind, path, value in ops:
                if kind == "file":
                    sha = hashlib.sha256(value).hexdigest()
                    tree[path] = {"sha256": sha, "size": len(value), "lfs": False, "blob_id": git_blob_sha1(value)}
                    pending.append((path, value))
                elif kind == "lfsFile":
                    stored = self.root / "lfs" / value["oid"]
                    if not stored.is_file():
                        raise HubError(400, f"Your push was rejected because an LFS pointer pointed to a file that "
                                            f"does not exist: {path!r} -> sha256:{value['oid']} was never uploaded")
                    size = stored.stat().st_size
                    if value.get("size") is not None and value["size"] != size:
                        raise HubError(400, f"LFS file {path!r}: size {value['size']} does not match the "
                                            f"uploaded object ({size} bytes)")
                    tree[path] = {"sha256": value["oid"], "size": size, "lfs": True,
                                  "blob_id": git_blob_sha1(lfs_pointer(value["oid"], size))}
                elif kind == "deletedFile":
                    if path not in tree:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
                    del tree[path]
                    deleted[path] = None
                    changed.pop(path, None)
                    continue
                else:  # deletedFolder
                    gone = [p for p in tree if p.startswith(path + "/")]
                    if not gone:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound")
                    for p in gone:
                        del tree[p]
                        deleted[p] = None
                        changed.pop(p, None)
                    continue
                changed[path] = None
                deleted.pop(path, None)
            files_as_dirs = sorted(set(tree) & self._dirs_of(tree))
            if files_as_dirs:
                raise HubError(400, f"Path conflict: {files_as_dirs[0]!r} would be both a file and a folder")
            for _, data in pending:
                self._store_regular(data)
            old_tree = repo["commits"][head]["tree"]
            changed_list = [p for p in changed if old_tree.get(p) != tree[p]]
            deleted_list = [p for p in deleted if p in old_tree]
            oid = self._make_commit(repo, branch, tree, summary, description, user, changed_list, deleted_list)
            self._save()
        return {"success": True, "commitOid": oid, "commitUrl": f"{self.url}/{self._web_path(repo)}/commit/{oid}",
                "hookOutput": "", "pullRequestUrl": None}

    def api_create_tag(self, req, repo_id: str, revision: str) -> Any:
        payload = req.json()
        with self._lock:
            repo, _ = self._repo_for_write(req.headers, repo_id)
            tag = _check_ref_name(payload.get("tag"), "tag")
            oid = self._revision(repo, revision)
            if tag in repo["tags"]:
                raise HubError(409, f"Tag {tag!r} already exists")
            repo["tags"][tag] = {"oid": oid, "message": payload.get("message") or ""}
            self._save()
        return {}

    def api_delete_tag(self, req, repo_id: str, tag: str) -> Any:
        with self._lock:
            repo, _ = self._repo_for_write(req.headers, repo_id)
            if tag not in repo["tags"]:
                raise HubError(404, f"Invalid rev id: {tag}", code="RevisionNotFound")
            del repo["tags"][tag]
            self._save()
        return {}

    def api_create_branch(self, req, repo_id: str, branch: str) -> Any:
        payload = req.json() if req.body else {}
        with self._lock:
            repo, _ = self._repo_for_write(req.headers, repo_id)
            _check_ref_name(branch, "branch")
            oid = self._revision(repo, payload.get("startingPoint") or "main")
            if branch in repo["branches"]:
                raise HubError(409, f"Branch {branch!r} already exists")
            repo["branches"][branch] = oid
            self._save()
        return {}

    def api_delete_branch(self, req, repo_id: str, branch: str) -> Any:
        with self._lock:
            repo, _ = self._repo_for_write(req.headers, repo_id)
            if branch not in repo["branches"]:
                raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
            if branch == "main":
                raise HubError(403, "Cannot delete the main branch")
            del repo["branches"][branch]
            self._save()
        return {}

    def resolve(self, req, repo_id: str, revision: str, path: str) -> Any:
        with self._lock:
            repo = self._repo_for_read(req.headers, repo_id)
            oid = self._revision(repo, revision)
            entry = repo["commits"][oid]["tree"].get(path)
            if entry is None:
                raise HubError(404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": oid})
            entry = dict(entry)
        etag = f'"{entry["sha256"] if entry["lfs"] else entry["blob_id"]}"'
        headers = {"X-Repo-Commit": oid, "ETag": etag, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream",
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(entry["size"])})
        return 200, self._blob_path(entry), headers


# ------------------------------------------------------------------ routing

_COLLECTION = re.compile(r"^/api/collections/([^/]+)/([^/]+)(/items(?:/([^/]+))?)?$")
_API_REPO = re.compile(r"^/api/(models|datasets|spaces)/([^/]+)/([^/]+)(/.*)?$")
_RESOLVE = re.compile(r"^/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$")
_LFS_BATCH = re.compile(r"^/([^/]+)/([^/]+)\.git/info/lfs/objects/batch$")
_OTHER_TYPE = re.compile(r"^/spaces/")
_DATASET_WEB = re.compile(r"^/datasets(/.*)$")


def _segments(rest: str) -> list[str]:
    return [unquote(s) for s in rest.split("/") if s != ""]


def _route(method: str, path: str) -> tuple[str | None, Any]:
    """(fault action, callable(hub, req)) for a request; raises HubError(404) for unknown routes."""
    if path == "/api/whoami-v2" and method == "GET":
        return None, lambda hub, req: hub.api_whoami(req)
    if path == "/api/repos/create" and method == "POST":
        return "create_repo", lambda hub, req: hub.api_create_repo(req)
    if path == "/api/repos/delete" and method == "DELETE":
        return None, lambda hub, req: hub.api_delete_repo(req)
    if path == "/api/validate-yaml" and method == "POST":
        return None, lambda hub, req: hub.api_validate_yaml(req)
    if path == "/api/collections" and method == "POST":
        return "collection", lambda hub, req: hub.api_create_collection(req)
    m = _COLLECTION.match(path)
    if m:
        slug, object_id = f"{unquote(m.group(1))}/{unquote(m.group(2))}", m.group(4)
        if m.group(3) is None and method == "GET":
            return None, lambda hub, req: hub.api_get_collection(req, slug)
        if m.group(3) == "/items" and method == "POST":
            return "collection", lambda hub, req: hub.api_add_collection_item(req, slug)
        if object_id and method == "PATCH":
            return "collection", lambda hub, req: hub.api_update_collection_item(req, slug, unquote(object_id))
        if object_id and method == "DELETE":
            return "collection", lambda hub, req: hub.api_delete_collection_item(req, slug, unquote(object_id))
        raise HubError(404, f"FakeHub has no route for {method} {path}")
    m = re.match(r"^/lfs-upload/([0-9a-f]{64})$", path)
    if m and method == "PUT":
        return "lfs_upload", lambda hub, req: hub.lfs_upload(req, m.group(1))
    if path == "/lfs-verify" and method == "POST":
        return None, lambda hub, req: hub.lfs_verify(req)

    m = _API_REPO.match(path)
    if m:
        kind, repo_id, rest = m.group(1), f"{unquote(m.group(2))}/{unquote(m.group(3))}", m.group(4) or ""
        if kind == "spaces":
            raise HubError(404, f"FakeHub only serves model and dataset repos, not {kind}", code="RepoNotFound")
        if kind == "datasets":
            repo_id = "datasets/" + repo_id  # the key dataset repos are stored under
        seg = _segments(rest)
        if not seg and method == "GET":
            return "model_info", lambda hub, req: hub.api_model_info(req, repo_id, None)
        if len(seg) >= 2 and seg[0] == "revision" and method == "GET":
            return "model_info", lambda hub, req: hub.api_model_info(req, repo_id, "/".join(seg[1:]))
        if seg == ["refs"] and method == "GET":
            return None, lambda hub, req: hub.api_refs(req, repo_id)
        if len(seg) == 2 and seg[0] == "commits" and method == "GET":
            return None, lambda hub, req: hub.api_commits(req, repo_id, seg[1])
        if len(seg) >= 2 and seg[0] == "tree" and method == "GET":
            return None, lambda hub, req: hub.api_tree(req, repo_id, seg[1], "/".join(seg[2:]))
        if len(seg) == 2 and method == "POST":
            handlers = {"preupload": ("preupload", FakeHub.api_preupload), "commit": ("commit", FakeHub.api_commit),
                        "paths-info": (None, FakeHub.api_paths_info), "tag": ("tag", FakeHub.api_create_tag),
                        "branch": (None, FakeHub.api_create_branch)}
            if seg[0] in handlers:
                action, fn = handlers[seg[0]]
                return action, lambda hub, req: fn(hub, req, repo_id, seg[1])
        if len(seg) == 2 and method == "DELETE" and seg[0] in ("tag", "branch"):
            fn = FakeHub.api_delete_tag if seg[0] == "tag" else FakeHub.api_delete_branch
            return ("tag" if seg[0] == "tag" else None), lambda hub, req: fn(hub, req, repo_id, seg[1])
        raise HubError(404, f"FakeHub has no route for {method} {path}")

    if path.startswith(("/api/models/", "/api/datasets/")):
        raise HubError(404, "Repository not found (FakeHub repo ids are 'namespace/name')", code="RepoNotFound")
    if _OTHER_TYPE.match(path):
        raise HubError(404, "FakeHub only serves model and dataset repos", code="RepoNotFound")
    dataset = _DATASET_WEB.match(path)
    if dataset:  # /datasets/{repo}/resolve/... and /datasets/{repo}.git/...: a model repo's routes, keyed "datasets/"
        action, endpoint = _route(method, dataset.group(1))
        return action, _in_datasets(endpoint)
    m = _LFS_BATCH.match(path)
    if m and method == "POST":
        repo_id = f"{unquote(m.group(1))}/{unquote(m.group(2))}"
        return "lfs_batch", lambda hub, req: hub.lfs_batch(req, repo_id)
    m = _RESOLVE.match(path)
    if m and method in ("GET", "HEAD"):
        repo_id = f"{unquote(m.group(1))}/{unquote(m.group(2))}"
        revision, file_path = unquote(m.group(3)), "/".join(_segments(m.group(4)))
        return "download", lambda hub, req: hub.resolve(req, repo_id, revision, file_path)
    raise HubError(404, f"FakeHub has no route for {method} {path}")


def _in_datasets(endpoint: Any) -> Any:
    """A web route (resolve, LFS batch) of a model repo, applied to the dataset repo of the same id."""
    def call(hub: FakeHub, req: "_Request") -> Any:
        return endpoint(_DatasetView(hub), req)
    return call


class _DatasetView:
    """The hub as a web route sees it for a dataset: repo ids map to the "datasets/" keys."""

    def __init__(self, hub: FakeHub):
        self._hub = hub

    def resolve(self, req, repo_id: str, revision: str, path: str) -> Any:
        return self._hub.resolve(req, "datasets/" + repo_id, revision, path)

    def lfs_batch(self, req, repo_id: str) -> Any:
        return self._hub.lfs_batch(req, "datasets/" + repo_id)


class _Request:
    def __init__(self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]]):
        self.headers = handler.headers
        self.query = query
        self.body = b""
        self.body_file: Path | None = None
        self.body_sha256 = ""
        self.body_size = 0

    def json(self) -> dict:
        try:
            data = json.loads(self.body or b"{}")
        except json.JSONDecodeError as exc:
            raise HubError(400, f"Invalid JSON body: {exc}") from None
        if not isinstance(data, dict):
            raise HubError(400, "The JSON body must be an object")
        return data


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeHub/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _body_chunks(self) -> Iterator[bytes]:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                while True:
                    size_line = self.rfile.readline()
                    if not size_line:
                        return
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return
                    remaining = size
                    while remaining:
                        chunk = self.rfile.read(min(remaining, 1 << 20))
                        if not chunk:
                            return
                        remaining -= len(chunk)
                        yield chunk
                    self.rfile.readline()
            else:
                remaining = int(self.headers.get("Content-Length") or 0)
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        return
                    remaining -= len(chunk)
                    yield chunk

        def _read_body(self, req: _Request, to_file: bool) -> None:
            if not to_file:
                req.body = b"".join(self._body_chunks())
                return
            tmp = hub.root / "tmp" / uuid.uuid4().hex
            sha, size = hashlib.sha256(), 0
            with tmp.open("wb") as f:
                for chunk in self._body_chunks():
                    sha.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
            req.body_file, req.body_sha256, req.body_size = tmp, sha.hexdigest(), size

        def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
            headers = dict(headers)
            headers.setdefault("X-Request-Id", uuid.uuid4().hex)
            file_path: Path | None = None
            start, length, total = 0, 0, 0
            if isinstance(body, Path):
                file_path = body
                total = body.stat().st_size
                start, length = 0, total
                rng = self.headers.get("Range")
                if rng and status == 200:
                    m = _RANGE.match(rng)
                    first = m.group(1) if m else ""
                    last = m.group(2) if m else ""
                    if m and (first or last):
                        if first:
                            start = int(first)
                            end = min(int(last), total - 1) if last else total - 1
                        else:
                            start, end = max(total - int(last), 0), total - 1
                        if start >= total or end < start:
                            headers["Content-Range"] = f"bytes */{total}"
                            self._send(416, {"error": "Requested range not satisfiable"}, headers)
                            return
                        status, length = 206, end - start + 1
                        headers["Content-Range"] = f"bytes {start}-{end}/{total}"
                data = b""
            elif isinstance(body, (bytes, bytearray)):
                data = bytes(body)
                length = len(data)
            else:
                data = json.dumps(body, default=str).encode()
                length = len(data)
                headers.setdefault("Content-Type", "application/json; charset=utf-8")
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if self.command == "HEAD":
                return
            if file_path is not None:
                with file_path.open("rb") as f:
                    f.seek(start)
                    remaining = length
                    while remaining > 0:
                        chunk = f.read(min(remaining, 1 << 20))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        remaining -= len(chunk)
            else:
                self.wfile.write(data)

        def _send_error(self, err: HubError) -> None:
            body = dict(err.body or {})
            body.setdefault("error", err.message)
            one_line = " ".join(err.message.split())  # no CR/LF in a header
            headers = {"X-Error-Message": one_line.encode("ascii", "replace").decode()[:500], **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send(err.status, body, headers)

        def _handle(self) -> None:
            split = urlsplit(self.path)
            path = split.path
            with hub._lock:
                hub.requests.append((self.command, path))
            req = _Request(self, parse_qs(split.query, keep_blank_values=True))
            try:
                action, endpoint = _route(self.command, path)
            except HubError as err:
                self._read_body(req, to_file=False)
                self._send_error(err)
                return
            self._read_body(req, to_file=action == "lfs_upload")
            try:
                fault = hub._take_fault(action)
                if fault == "drop":
                    raise _Dropped()
                if fault == "500":
                    raise HubError(500, "Internal Error - We're working hard to fix this as soon as possible!")
                if action != "lfs_upload":  # as on the Hub, an unknown token is refused everywhere, reads included
                    hub._user(req.headers)
                result = endpoint(hub, req)
                status, body, headers = result if isinstance(result, tuple) else (200, result, {})
            except _Dropped:
                if req.body_file is not None:
                    req.body_file.unlink(missing_ok=True)
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            except HubError as err:
                if req.body_file is not None:
                    req.body_file.unlink(missing_ok=True)
                self._send_error(err)
                return
            except Exception as exc:  # a bug in FakeHub: answer 500 with the reason, keep serving
                if req.body_file is not None:
                    req.body_file.unlink(missing_ok=True)
                self._send_error(HubError(500, f"FakeHub internal error: {type(exc).__name__}: {exc}"))
                return
            self._send(status, body, headers)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    return Handler


# ------------------------------------------------------------------ client-side setup


class _NoSleep:
    """Stands in for the `time` module inside huggingface_hub's retry loops: same functions, no waiting."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        pass


def patch_hf_client(monkeypatch, endpoint: str | None = None, *, fast_retries: bool = True) -> None:
    """Make the already-imported huggingface_hub usable against a FakeHub in this process, for one test.

    * `constants.HF_HUB_OFFLINE = False`: `is_offline_mode()` (checked by the httpx request hook on *every* request)
      returns this module attribute, computed from the environment at import; tests/conftest.py sets
      HF_HUB_OFFLINE=1 before the import, so changing the environment variable afterwards has no effect.
    * `constants.HF_HUB_DISABLE_XET = True`: `is_xet_available()` reads it at call time; with hf_xet installed the
      client would otherwise upload through Xet (no LFS fallback) and `upload_folder` would use the Xet pipeline.
    * `endpoint`: also points `constants.ENDPOINT` *and* `constants.HUGGINGFACE_CO_URL_TEMPLATE` (hf_hub_url builds
      from the template and only swaps a prefix equal to `constants.ENDPOINT`) at the hub, for code that does not
      pass `endpoint=`.
    * `fast_retries`: huggingface_hub's `http_backoff` sleeps 1+2+4+8+8 s over its 5 retries (and `http_get` 1 s per
      resumed download); the sleeps become no-ops, the retries themselves still happen.
    """
    from huggingface_hub import constants, file_download
    from huggingface_hub.utils import _http

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    if endpoint is not None:
        endpoint = endpoint.rstrip("/")
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    if fast_retries:
        monkeypatch.setattr(_http, "time", _NoSleep())
        monkeypatch.setattr(file_download, "time", _NoSleep())
