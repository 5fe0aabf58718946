"""Where builds are published: the Hugging Face Hub, or a local folder laid out the same way.

Both targets answer three questions: what build does a repo hold now (`lookup`, read from the
card's `factory` metadata), put these files there as one unit (`publish`), and what files
does it hold (`listing`, for verification). The Hub target uploads everything in ONE commit,
so a failure at any point before the commit leaves the repo as it was; files the new build no
longer has are deleted in that same commit. The token comes from huggingface_hub (HF_TOKEN
or the stored login) and is never printed or written anywhere: every message made from a
server's answer goes through factory.core.redact.scrub, whatever the server echoed back.

Every Hub call has a timeout and bounded retries (factory.core.net). A push holds the target's
lock (factory.core.locks) from its lookup to its verification, so two runs never write one repo at
once: on the Hub, runs of one machine are serialised and runs of different machines are kept
apart by the commit's parent; a local folder is locked in <root>/.locks/.

A local folder target is replaced whole (factory.core.atomic): the new copy is written aside as
`.<name>.partial-<pid>` and exchanged with the old one in one step, so the repo folder always
exists and holds a complete copy, old or new. Copies left by killed runs are removed (or an old
copy put back) by the next run that writes to the same org folder.

What a target lists is checked against the local files by factory.core.hub_files.verify.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

from factory.core.atomic import atomic_dir, remove_stale, remove_stale_in
from factory.core.errors import FactoryError, HubUnreachable, UserError, first_line
from factory.core.hub_files import GITATTRIBUTES, RemoteFile, card_metadata, sha256_file
from factory.core.locks import hold
from factory.core.net import configure_hub_client, hub_retries, hub_timeout
from factory.core.paths import cache_root
from factory.core.redact import scrub
from factory.core.safepath import segment


@dataclass(frozen=True)
class RemoteBuild:
    """What a repo holds now: its commit and the card's `factory` metadata (None: not a factory build)."""

    repo_id: str
    commit: str | None
    factory: dict | None


@dataclass
class Pushed:
    repo_id: str
    url: str
    commit: str | None
    tag: str | None
    deleted: list[str] = field(default_factory=list)
    sha256: dict[str, str] = field(default_factory=dict)  # what the upload already hashed, by repo path
    unchanged: bool = False  # the target already held exactly these files: nothing changed there


class Target(Protocol):
    description: str

    def default_org(self) -> str: ...
    def location(self, repo_id: str) -> str: ...
    def lookup(self, repo_id: str) -> RemoteBuild | None: ...
    def publish(self, repo_id: str, files: dict[str, Path], message: str, description: str, tag: str,
                private: bool, head: str | None) -> Pushed: ...
    def ensure_tag(self, repo_id: str, tag: str, commit: str | None) -> None: ...
    def listing(self, repo_id: str, revision: str | None) -> dict[str, RemoteFile]: ...
    def lock(self, repo_id: str): ...
    # small reads (factory.fleet.report): one file's bytes (None: not there), and the files' sizes without their content
    def read_file(self, repo_id: str, path: str, revision: str | None) -> bytes | None: ...
    def file_sizes(self, repo_id: str, revision: str | None) -> dict[str, int]: ...


def target_for(to: str | None) -> Target:
    """`--to DIR`: a local folder; otherwise (no --to) the Hub at HF_ENDPOINT (default huggingface.co).
    An empty --to is bad input, not the Hub: a script whose variable came out empty must not publish."""
    if to is None:
        return Hub()
    if not to.strip():
        raise UserError("--to is empty: give a folder to publish to (leave the option out for the Hub)")
    root = Path(to)
    if root.exists() and not root.is_dir():
        raise UserError(f"--to {to}: is a file, not a folder")
    return LocalFolder(root)


# ---------------------------------------------------------------- the Hub


class Hub:
    def __init__(self) -> None:
        configure_hub_client()  # timeouts and bounded retries on every call (factory.core.net)
        from huggingface_hub import HfApi, constants, get_token

        self.endpoint = constants.ENDPOINT
        self.description = f"the Hub at {self.endpoint}"
        self._token = get_token()  # kept private: never formatted into a message or a file
        self.api = HfApi(endpoint=self.endpoint, token=self._token or False)
        self._org: str | None = None

    def require_token(self) -> None:
        if not self._token:
            raise UserError("no Hugging Face token: set HF_TOKEN (or run `hf auth login`) to publish to "
                            f"{self.endpoint}")

    def location(self, repo_id: str) -> str:
        return f"{self.endpoint}/{repo_id}"

    def lock(self, repo_id: str):
        """This machine's lock on one Hub repo (runs elsewhere are kept apart by the commit's parent)."""
        import hashlib

        key = hashlib.sha256(f"{self.endpoint}/{repo_id}".encode()).hexdigest()[:16]
        return hold(cache_root() / "locks" / f"hub-{key}.lock", f"{repo_id} on {self.endpoint}")

    def default_org(self) -> str:
        if self._org is None:
            if not self._token:
                raise UserError("publish.org is not set and there is no token to ask the Hub for your user "
                                "name: set publish.org in the recipe, pass --org, or set HF_TOKEN")
            with hub_errors("ask the Hub who the token belongs to", ""):
                self._org = self.api.whoami()["name"]
        return self._org

    def lookup(self, repo_id: str) -> RemoteBuild | None:
        try:
            with hub_errors("read", repo_id):
                info = self.api.model_info(repo_id, timeout=hub_timeout())  # it passes timeout=None otherwise
        except _NotFound:  # hub_errors maps "repository not found" on a read to this
            return None
        data = info.card_data.to_dict() if info.card_data is not None else {}
        block = data.get("factory")
        return RemoteBuild(repo_id, info.sha, block if isinstance(block, dict) else None)

    def publish(self, repo_id: str, files: dict[str, Path], message: str, description: str, tag: str,
                private: bool, head: str | None) -> Pushed:
        """Upload `files` as one commit on top of `head` (the commit `lookup` saw; None: no repo yet)."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        self.require_token()
        with hub_errors("create", repo_id):
            url = self.api.create_repo(repo_id, private=private, exist_ok=True)
        if head is None:  # created just now: its first commit (e.g. .gitattributes) is the parent
            current = self.lookup(repo_id)
            head = current.commit if current else None
        stale = sorted(set(self.listing(repo_id, head)) - set(files) - {GITATTRIBUTES}) if head else []
        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local))
                      for path, local in sorted(files.items())]
        operations += [CommitOperationDelete(path_in_repo=path) for path in stale]
        with hub_errors("upload to", repo_id):
            # One commit: the LFS uploads happen first and the commit only names them, so a
            # failure anywhere before it publishes nothing. parent_commit refuses to overwrite
            # a commit someone else made in the meantime.
            commit = self.api.create_commit(repo_id, operations, commit_message=message,
                                            commit_description=description, parent_commit=head)
        self.ensure_tag(repo_id, tag, commit.oid)
        hashed = {op.path_in_repo: op.upload_info.sha256.hex() for op in operations
                  if isinstance(op, CommitOperationAdd)}
        # huggingface_hub drops files the repo already holds unchanged and makes no empty commit:
        # the commit it returns is then the head we started from.
        unchanged = head is not None and commit.oid == head
        return Pushed(repo_id, str(url), commit.oid, tag, stale, hashed, unchanged=unchanged)

    def ensure_tag(self, repo_id: str, tag: str, commit: str | None) -> None:
        if not self._token or commit is None:
            return
        from huggingface_hub.errors import HfHubHTTPError

        try:
            with hub_errors("tag", repo_id):
                refs = self.api.list_repo_refs(repo_id)
                if any(t.name == tag for t in refs.tags):
                    return
                self.api.create_tag(repo_id, tag=tag, revision=commit, tag_message=f"factory build {tag}",
                                    exist_ok=True)
        except (FactoryError, HfHubHTTPError) as exc:
            raise FactoryError(f"{repo_id}: commit {commit[:12]} is published, but tagging it failed "
                               f"({first_line(exc)}); run again to add the tag") from None

    def listing(self, repo_id: str, revision: str | None) -> dict[str, RemoteFile]:
        from huggingface_hub.hf_api import RepoFile

        with hub_errors("list", repo_id):
            entries = self.api.list_repo_tree(repo_id, revision=revision, recursive=True, expand=True)
            return {e.path: RemoteFile(e.size, e.lfs.sha256 if e.lfs else None, None if e.lfs else e.blob_id)
                    for e in entries if isinstance(e, RepoFile)}


    def read_file(self, repo_id: str, path: str, revision: str | None) -> bytes | None:
        """One small file of a repo (an evaluation record), downloaded alone; None when the repo has none."""
        from huggingface_hub.errors import EntryNotFoundError

        try:
            with hub_errors("read", repo_id):
                try:
                    local = self.api.hf_hub_download(repo_id, path, revision=revision, etag_timeout=hub_timeout())
                except EntryNotFoundError:  # before hub_errors takes its 404 for a failed call
                    return None
        except _NotFound:
            return None
        return Path(local).read_bytes()

    def file_sizes(self, repo_id: str, revision: str | None) -> dict[str, int]:
        """Every file's size, from the tree listing: no file is downloaded."""
        from huggingface_hub.hf_api import RepoFile

        with hub_errors("list", repo_id):
            return {e.path: e.size for e in self.api.list_repo_tree(repo_id, revision=revision, recursive=True)
                    if isinstance(e, RepoFile)}


class _NotFound(Exception):
    pass


@contextlib.contextmanager
def hub_errors(action: str, repo_id: str) -> Iterator[None]:
    """Map the client's errors to one line each: bad input (exit 2) or a failed call (exit 1)."""
    try:
        yield
    except Exception as exc:
        # The client wraps a failed LFS upload in RuntimeError("Error while uploading ..."): look
        # at the cause too.
        for candidate in (exc, exc.__cause__):
            mapped = _one_line_error(candidate, action, f" {repo_id}" if repo_id else "")
            if mapped is not None:
                raise mapped from None
        raise


# What a failed call means for the target: only a failed write can say that nothing was published.
WRITES = ("create", "upload to")


def _after(action: str) -> str:
    return "nothing was published; run again" if action in WRITES else "run again"


def _one_line_error(exc: BaseException | None, action: str, where: str) -> Exception | None:
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    if isinstance(exc, OfflineModeIsEnabled):
        return HubUnreachable(f"cannot {action}{where}: HF_HUB_OFFLINE is set (use --to DIR for a local folder)")
    if isinstance(exc, RepositoryNotFoundError):
        if action == "read":
            return _NotFound()
        return UserError(f"cannot {action}{where}: the Hub says it does not exist or the token may not see it")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            return UserError(f"cannot {action}{where}: the Hub rejected the token (HTTP 401); check HF_TOKEN")
        if status == 403:
            return UserError(f"cannot {action}{where}: permission refused (HTTP 403); the token may not write "
                             "to this namespace")
        if status in (400, 409, 412, 422):
            return UserError(f"cannot {action}{where}: the Hub refused (HTTP {status}: {_server_message(exc)})")
        return FactoryError(f"cannot {action}{where}: the Hub answered HTTP {status} ({_server_message(exc)}); "
                            f"{_after(action)}")
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return HubUnreachable(f"cannot {action}{where}: the Hub did not answer within {hub_timeout():g} s "
                              f"({type(exc).__name__}, {1 + hub_retries()} tries; FACTORY_HUB_TIMEOUT, "
                              f"FACTORY_HUB_RETRIES); {_after(action)}")
    if isinstance(exc, (httpx.HTTPError, ConnectionError)):
        return HubUnreachable(f"cannot {action}{where}: the Hub did not answer ({type(exc).__name__}); "
                              f"{_after(action)}")
    return None


def _server_message(exc) -> str:
    """The server's own words, one line, without any credential it may have echoed."""
    message = getattr(exc, "server_message", None) or str(exc)
    return scrub(first_line(message))[:200]


# ---------------------------------------------------------------- a local folder


class LocalFolder:
    """<root>/<org>/<name>/ holds exactly the files an upload would; swapped in whole."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"the local folder {root}"

    def default_org(self) -> str:
        return "local"

    def location(self, repo_id: str) -> str:
        return str(self._dir(repo_id))

    def _dir(self, repo_id: str) -> Path:
        """<root>/<org>/<name>: both parts checked, so no repo id reaches outside the root."""
        parts = repo_id.split("/") if isinstance(repo_id, str) else []
        if len(parts) != 2:
            raise UserError(f"repo id {repo_id!r}: must be 'namespace/name'")
        return self.root / segment(parts[0], f"repo id {repo_id!r}") / segment(parts[1], f"repo id {repo_id!r}")

    def lock(self, repo_id: str):
        org, name = self._dir(repo_id).parts[-2:]
        return hold(self.root / ".locks" / f"{org}--{name}.lock", f"{repo_id} in {self.root}")

    def lookup(self, repo_id: str) -> RemoteBuild | None:
        readme = self._dir(repo_id) / "README.md"
        if not readme.is_file():
            return None
        block = card_metadata(readme.read_text(encoding="utf-8")).get("factory")
        return RemoteBuild(repo_id, None, block if isinstance(block, dict) else None)

    def publish(self, repo_id: str, files: dict[str, Path], message: str, description: str, tag: str,
                private: bool, head: str | None) -> Pushed:
        final = self._dir(repo_id)
        with self.lock(repo_id):
            # What killed runs left: this repo's copies (all of them: we hold its lock), and the copies
            # of dead processes beside the other repos of the org.
            remove_stale(final, ".", owned=True)
            remove_stale_in(final.parent, ".")
            held = {str(p.relative_to(final)) for p in final.rglob("*") if p.is_file()} if final.is_dir() else set()
            deleted = sorted(held - set(files))  # names only: listing() would hash every old file
            hashed: dict[str, str] = {}
            unchanged = held == set(files) and all(
                (final / path).stat().st_size == local.stat().st_size
                and sha256_file(final / path) == hashed.setdefault(path, sha256_file(local))
                for path, local in sorted(files.items()))
            with atomic_dir(final, prefix=".", owned=True) as partial:
                for path, local in files.items():
                    (partial / path).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(local, partial / path)
        return Pushed(repo_id, str(final), None, None, deleted, hashed, unchanged=unchanged)

    def ensure_tag(self, repo_id: str, tag: str, commit: str | None) -> None:
        return None  # a folder has no refs

    def read_file(self, repo_id: str, path: str, revision: str | None) -> bytes | None:
        file = self._dir(repo_id) / path
        return file.read_bytes() if file.is_file() else None

    def file_sizes(self, repo_id: str, revision: str | None) -> dict[str, int]:
        base = self._dir(repo_id)
        return {str(p.relative_to(base)): p.stat().st_size for p in sorted(base.rglob("*")) if p.is_file()}

    def listing(self, repo_id: str, revision: str | None) -> dict[str, RemoteFile]:
        base = self._dir(repo_id)
        return {str(p.relative_to(base)): RemoteFile(p.stat().st_size, sha256_file(p), None)
                for p in sorted(base.rglob("*")) if p.is_file()}
