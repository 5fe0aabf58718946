"""A base model's evaluation, computed once per fleet: this machine's cache, then the fleet's store.

A base model's figures depend only on its *identity*: model id, revision, the evaluation plan
(tasks, perplexity sets, harness settings and version), library versions and the layout of
metrics.json. Its key is `digest(identity)`. `obtain` looks for the figures in this order:

1. this machine's cache, `<FACTORY_CACHE>/base-evals/<org>--<model>/<key>/` (metrics.json,
   identity.json; FACTORY_CACHE defaults to ~/.cache/factory): shared by every job and workdir
   on the machine, and kept between jobs (a CI checkout is cleaned, the runner's home is not);
2. the fleet's store, when the recipe names one (`publish.base_evals: org/name`): a Hub dataset
   repo holding one file per identity, `<org>--<model>/<key>.json` = {format, key, identity,
   metrics, metrics_digest}. A file is used only when digest(identity) is the key in its name,
   its identity is the one this job computes and its metrics hash to its metrics_digest;
   anything else is refused with one line naming the file. Files are read through the Hugging
   Face cache, so a file read once is read again offline; a store that cannot be reached is not
   fatal (the job evaluates the base model itself and says so);
3. measured here, written to the cache, then pushed to the store. The first file pushed wins:
   a file already there is never replaced (a concurrent push is detected by the commit's parent).

Steps 1-3 run under a file lock per identity, so two jobs on one machine never evaluate the same
base model at once: the second waits, then reuses the first's figures. The cache folder is written
aside and renamed into place (factory.core.atomic), so a reader without the lock sees it whole or not at
all. No message carries the Hugging Face token.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from factory.core.cache import made_once
from factory.core.errors import first_line
from factory.core.paths import cache_root
from factory.engines.base_models import slug, source_revision
from factory.pipeline.fingerprint import digest, library_versions

if TYPE_CHECKING:
    from factory.recipe import ModelEntry
    from factory.recipe.eval_plan import EvalPlan

METRICS_FILE = "metrics.json"
IDENTITY_FILE = "identity.json"
ORIGIN_FILE = "store.json"  # in a cache folder filled from the store: where it came from
# metrics.json's layout; part of the identity, so an older layout is never read
METRICS_FORMAT = 2
# the store file's layout
STORE_FORMAT = 1
PUSH_ATTEMPTS = 3


@dataclass(frozen=True)
class BaseFigures:
    path: Path  # the cache folder holding metrics.json
    source: str  # "cache" (this machine), "store" (the fleet's store) or "measured" (here, now)

    @property
    def reused(self) -> bool:
        return self.source != "measured"


class Refused(Exception):
    """A store file that does not hold what its name claims."""


# ---------------------------------------------------------------- identity and places


def base_identity(entry: "ModelEntry", recipe_dir: Path, plan: "EvalPlan") -> dict:
    """What the base model's figures depend on. Computable from the recipe alone (no model loads)."""
    return {"model": entry.id, "revision": source_revision(entry, recipe_dir), "plan": plan.settings(),
            "libraries": library_versions(), "metrics_format": METRICS_FORMAT}


def cache_dir(identity: dict) -> Path:
    return cache_root() / "base-evals" / slug(identity["model"]) / digest(identity)


def store_path(identity: dict) -> str:
    """The file's path in the store repo: one per (model revision, evaluation fingerprint)."""
    return f"{slug(identity['model'])}/{digest(identity)}.json"


def _complete(folder: Path) -> bool:
    return (folder / METRICS_FILE).is_file()


def _canonical(value) -> object:
    return json.loads(json.dumps(value, sort_keys=True))


def _dump(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------- the whole lookup


def obtain(identity: dict, store: str | None, measure: Callable[[Path], None], log=print,
           private: bool = False, what: str = "base model") -> BaseFigures:
    """The base figures for `identity`: from this machine's cache, the store, or `measure(folder)`
    (which writes metrics.json into `folder`); see the module docstring."""
    target = cache_dir(identity)
    refused = False

    def make(partial: Path) -> str:
        nonlocal refused
        if store:
            try:
                document = read_store(store, identity, log)
            except Refused as exc:
                log(f"  {what}: refused {store}/{store_path(identity)} from the store: {exc}; evaluating it here")
                document, refused = None, True
            if document is not None:
                (partial / METRICS_FILE).write_text(_dump(document["metrics"]))
                (partial / IDENTITY_FILE).write_text(_dump(document["identity"]))
                (partial / ORIGIN_FILE).write_text(_dump({"repo": store, "path": store_path(identity)}))
                log(f"  {what}: scores from the store {store}/{store_path(identity)} (fingerprint checked); "
                    "skipping its evaluation")
                return "store"
        log(f"  {what}: evaluating once for this plan (cached in {target})")
        measure(partial)
        (partial / IDENTITY_FILE).write_text(_dump(identity))
        return "measured"

    def waiting() -> None:
        log("  base model: another job on this machine is evaluating it; waiting for its figures")

    source = made_once("base-eval", target, _complete, make, waiting, owned=False)
    if source == "cache":
        log(f"  {what}: reusing its evaluation from {target}")
    elif source == "waited":
        log(f"  {what}: reusing its evaluation from {target} (another job on this machine made it)")
    elif source == "measured" and store:
        metrics = json.loads((target / METRICS_FILE).read_text())
        push_store(store, identity, metrics, log, private=private, refused=refused)
    return BaseFigures(target, "cache" if source == "waited" else source)


# ---------------------------------------------------------------- the store


def store_document(identity: dict, metrics: dict) -> str:
    """The store file for these figures: the identity, the metrics, and digests of both."""
    return _dump({"format": STORE_FORMAT, "key": digest(identity), "identity": _canonical(identity),
                  "metrics": _canonical(metrics), "metrics_digest": digest(metrics)})


def check_document(text: str, key: str, identity: dict) -> dict:
    """The parsed store file if it holds the figures of `identity` under `key`; raises Refused (one line)."""
    try:
        document = json.loads(text)
    except ValueError:
        raise Refused("not valid JSON") from None
    if not isinstance(document, dict):
        raise Refused("not a JSON object")
    if document.get("format") != STORE_FORMAT:
        raise Refused(f"format {document.get('format')!r}, expected {STORE_FORMAT}")
    theirs, metrics = document.get("identity"), document.get("metrics")
    if not isinstance(theirs, dict) or not isinstance(metrics, dict) \
            or not isinstance(metrics.get("metrics"), dict) or not isinstance(metrics.get("higher_is_better"), dict):
        raise Refused("it lacks the identity or the metrics")
    claimed = digest(theirs)
    if claimed != key or document.get("key") != key:
        raise Refused(f"its identity hashes to {claimed}, not to {key} (its name)")
    ours = _canonical(identity)
    if theirs != ours:
        differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise Refused(f"its identity is not this job's (differs in: {', '.join(differ)})")
    if document.get("metrics_digest") != digest(metrics):
        raise Refused(f"its scores hash to {digest(metrics)}, not to the metrics_digest it carries "
                      f"({document.get('metrics_digest')})")
    return document


def read_store(store: str, identity: dict, log) -> dict | None:
    """The checked store file for `identity`, or None (not there yet, or the store cannot be reached:
    said in one line). Raises Refused for a file that does not hold what its name claims."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    path = store_path(identity)
    try:
        with _quiet_client():
            local = hf_hub_download(store, path, repo_type="dataset")
    except LocalEntryNotFoundError as exc:  # offline or no answer, and not in the Hugging Face cache
        log(f"  base model: the store {store} cannot be reached ({_reason(exc)}); evaluating it here")
        return None
    except GatedRepoError as exc:
        log(f"  base model: the store {store} cannot be read ({_reason(exc)}); evaluating it here")
        return None
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
        log(f"  base model: not in the store {store} yet; evaluating it here, then pushing it there")
        return None
    except Exception as exc:  # HTTP 401/403/5xx, a dropped connection, a full disk: not fatal
        log(f"  base model: the store {store} cannot be read ({_reason(exc)}); evaluating it here")
        return None
    return check_document(Path(local).read_text(encoding="utf-8", errors="replace"), digest(identity), identity)


def store_has(store: str, path: str) -> bool:
    """Whether the store holds `path` now (metadata only); False when it cannot be asked."""
    from huggingface_hub import HfApi

    try:
        with _quiet_client():
            return bool(HfApi().get_paths_info(store, [path], repo_type="dataset"))
    except Exception:
        return False


def push_store(store: str, identity: dict, metrics: dict, log, private: bool = False, refused: bool = False) -> bool:
    """Push the figures to the store unless a file is there already (never replaced). Not fatal: a
    failure is one line, and the figures stay in this machine's cache. True when this job pushed them."""
    from huggingface_hub import HfApi, constants, get_token

    if constants.is_offline_mode():
        log(f"  base model: not pushed to the store {store} (HF_HUB_OFFLINE is set)")
        return False
    if not get_token():
        log(f"  base model: not pushed to the store {store} (no Hugging Face token: set HF_TOKEN)")
        return False
    try:
        with _quiet_client():
            return _push(HfApi(), store, identity, store_document(identity, metrics).encode(), log, private, refused)
    except Exception as exc:
        log(f"  base model: could not push to the store {store} ({_reason(exc)}); the scores stay in this "
            "machine's cache")
        return False


def _push(api, store: str, identity: dict, data: bytes, log, private: bool, refused: bool) -> bool:
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    path = store_path(identity)
    where = f"{store}/{path}"
    api.create_repo(store, repo_type="dataset", private=private, exist_ok=True)
    for attempt in range(PUSH_ATTEMPTS):
        head = api.dataset_info(store).sha
        if api.get_paths_info(store, [path], repo_type="dataset", revision=head):
            if refused:
                log(f"  base model: left the refused {where} in the store as it is; delete it to let a job "
                    "push correct scores")
            else:
                log(f"  base model: {where} is in the store already (another job pushed it); left as it is")
            return False
        try:
            # parent_commit: a commit made since `head` (another job's push) fails this one; look again
            api.create_commit(store, [CommitOperationAdd(path, data)], repo_type="dataset",
                              commit_message=f"base evaluation of {identity['model']} ({digest(identity)})",
                              parent_commit=head)
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (409, 412) and attempt + 1 < PUSH_ATTEMPTS:
                continue
            raise
        log(f"  base model: pushed its scores to the store: {where}")
        return True
    return False


@contextlib.contextmanager
def _quiet_client():
    """huggingface_hub logs each retry of an unreachable store ("Retrying in 2s ..."): the store's
    outcome is said in one line instead."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _reason(exc: BaseException) -> str:
    """One line about a failed Hub call, without the token."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if constants.is_offline_mode() or isinstance(exc, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set"
    if isinstance(exc, LocalEntryNotFoundError):  # no answer, and not in the Hugging Face cache
        cause = exc.__cause__ or exc.__context__
        exc = cause if cause is not None else exc
        if isinstance(exc, LocalEntryNotFoundError):
            return "no answer, and the file is not in the Hugging Face cache"
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        text = f"HTTP {exc.response.status_code}: {getattr(exc, 'server_message', None) or first_line(exc)}"
    else:
        text = f"{type(exc).__name__}: {first_line(exc)}"
    return _scrub(first_line(text)[:200])


def _scrub(text: str) -> str:
    from huggingface_hub import get_token

    token = get_token()
    return text.replace(token, "***") if token else text
