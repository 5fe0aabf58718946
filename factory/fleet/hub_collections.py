"""One Hub Collection per base model and org: "<model> low-bit (factory)", holding every published build
of that base (ordered by bits, then method) and the report repo, each with a note (method, bits,
effective bits, mean recovery).

The Collection is brought to what the builds say, no more: an item that is missing is added, a note
that changed is updated, an item whose repo is gone (or that no recipe publishes any more) is deleted,
and items out of order are moved. A second run over the same builds changes nothing. On the Hub this goes
through huggingface_hub's collections API (create_collection with exists_ok, get_collection,
add_collection_item, update_collection_item, delete_collection_item); a local folder target keeps the
Collection as a file in the same JSON shape, <root>/.collections/<namespace>/<title>.json.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from factory.core.collection_title import check_title, title_for
from factory.core.errors import UserError
from factory.core.hub import Hub, LocalFolder, hub_errors
from factory.core.safepath import segment
from factory.stages.figures import BuildFigures, bits_of

NOTE_MAX = 500  # the Hub's limit on an item's note (huggingface_hub's add_collection_item docstring)
DESCRIPTION_MAX = 150  # the Hub's limit on a collection's description (ditto)


@dataclass(frozen=True)
class Wanted:
    repo_id: str
    note: str


@dataclass
class Changes:
    slug: str
    added: list[str]
    updated: list[str]
    removed: list[str]
    moved: int

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.updated or self.removed or self.moved)


def note_for(build: BuildFigures) -> str:
    parts = [f"{build.method} {build.scheme}", f"{build.paper_bits} bits"]
    if build.effective_bits is not None:
        parts.append(f"{build.effective_bits:.2f} effective bits/weight"
                     + ("" if build.effective_bits_source == "counted" else f" ({build.effective_bits_source})"))
    if build.mean_recovery is not None:
        parts.append(f"mean recovery {build.mean_recovery:.3f}")
    labels = [x for x in ("smoke" if build.smoke else "", "simulated" if build.simulated else "") if x]
    note = ", ".join(parts) + (f" ({', '.join(labels)})" if labels else "")
    return note[:NOTE_MAX]


def wanted_items(builds: list[BuildFigures], report_repo: str | None) -> dict[tuple[str, str], list[Wanted]]:
    """{(namespace, base model): items in order}: the published builds by bits then method, then the report."""
    groups: dict[tuple[str, str], list[BuildFigures]] = {}
    for build in builds:
        if build.repo_id:
            groups.setdefault((build.repo_id.split("/")[0], build.model), []).append(build)
    out = {}
    for key, members in groups.items():
        members.sort(key=lambda b: (bits_of(b), b.method, b.repo_id))
        items = [Wanted(b.repo_id, note_for(b)) for b in members]
        if report_repo:
            items.append(Wanted(report_repo, f"The study: every build of {key[1]} in the paper's tables, with plots "
                                             "(factory report)"))
        out[key] = items
    return out


def sync(store, namespace: str, title: str, items: list[Wanted], description: str) -> Changes:
    """Bring the Collection `title` of `namespace` to `items` (see the module docstring)."""
    check_title(title)
    collection = store.ensure(namespace, title, description[:DESCRIPTION_MAX])
    slug = collection["slug"]
    wanted = {w.repo_id: w for w in items}
    held = {i["id"]: i for i in collection["items"] if i.get("type") == "model"}
    removed = [repo for repo in held if repo not in wanted]
    for repo in removed:
        store.delete_item(slug, held[repo]["_id"])
    added, updated = [], []
    for w in items:
        if w.repo_id not in held:
            store.add_item(slug, w.repo_id, w.note)
            added.append(w.repo_id)
        elif _note(held[w.repo_id]) != w.note:
            store.update_item(slug, held[w.repo_id]["_id"], note=w.note)
            updated.append(w.repo_id)
    moved = 0
    current = store.get(slug)
    order = [i for i in current["items"] if i.get("type") == "model" and i["id"] in wanted]
    by_id = {i["id"]: i for i in order}
    if [i["id"] for i in order] != [w.repo_id for w in items]:
        for position, w in enumerate(items):  # ours first, in order; anything else a person added stays after
            store.update_item(slug, by_id[w.repo_id]["_id"], position=position)
            moved += 1
    return Changes(slug, added, updated, removed, moved)


def _note(item: dict):
    note = item.get("note")
    return note.get("text") if isinstance(note, dict) else note


# ---------------------------------------------------------------- where Collections live


class HubCollections:
    """Collections on the Hub, through huggingface_hub's API; every error one line (factory.core.hub.hub_errors)."""

    def __init__(self, hub) -> None:
        self.api = hub.api
        self.hub = hub

    def _call(self, what: str, fn, *args, **kwargs):
        self.hub.require_token()
        with hub_errors(what, ""):
            return fn(*args, **kwargs)

    @staticmethod
    def _shape(collection) -> dict:
        return {"slug": collection.slug, "title": collection.title,
                "items": [{"_id": i.item_object_id, "id": i.item_id, "type": i.item_type, "position": i.position,
                           "note": {"text": i.note} if i.note is not None else None} for i in collection.items]}

    def ensure(self, namespace: str, title: str, description: str) -> dict:
        return self._shape(self._call(f"create the collection {title!r} in {namespace}", self.api.create_collection, title,
                                      namespace=namespace, description=description, exists_ok=True))

    def get(self, slug: str) -> dict:
        return self._shape(self._call(f"read the collection {slug}", self.api.get_collection, slug))

    def add_item(self, slug: str, repo_id: str, note: str) -> None:
        self._call(f"add {repo_id} to the collection {slug}", self.api.add_collection_item, slug, repo_id, "model",
                   note=note, exists_ok=True)

    def update_item(self, slug: str, object_id: str, note: str | None = None, position: int | None = None) -> None:
        self._call(f"update an item of the collection {slug}", self.api.update_collection_item, slug, object_id,
                   note=note, position=position)

    def delete_item(self, slug: str, object_id: str) -> None:
        self._call(f"delete an item of the collection {slug}", self.api.delete_collection_item, slug, object_id,
                   missing_ok=True)


class FolderCollections:
    """A local folder target's Collections: one JSON file each, in the Hub's shape, replaced whole."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path_for(self, namespace: str, title: str) -> Path:
        words = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "collection"
        return self.root / ".collections" / segment(namespace, "collection namespace") / f"{words}.json"

    def _path(self, slug: str) -> Path:
        namespace, words = slug.split("/", 1)
        return self.root / ".collections" / namespace / f"{words}.json"

    def _read(self, slug: str) -> dict:
        return json.loads(self._path(slug).read_text(encoding="utf-8"))

    def _write(self, collection: dict) -> None:
        path = self._path(collection["slug"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(collection, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def ensure(self, namespace: str, title: str, description: str) -> dict:
        path = self._path_for(namespace, title)
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
        collection = {"slug": f"{namespace}/{path.stem}", "title": title, "description": description,
                      "owner": {"name": namespace}, "items": [], "private": False}
        self._write(collection)
        return collection

    def get(self, slug: str) -> dict:
        return self._read(slug)

    def add_item(self, slug: str, repo_id: str, note: str) -> None:
        collection = self._read(slug)
        if not any(i["id"] == repo_id for i in collection["items"]):
            collection["items"].append({"_id": uuid.uuid4().hex[:24], "id": repo_id, "type": "model",
                                        "position": len(collection["items"]), "note": {"text": note}})
        self._write(collection)

    def update_item(self, slug: str, object_id: str, note: str | None = None, position: int | None = None) -> None:
        collection = self._read(slug)
        item = next(i for i in collection["items"] if i["_id"] == object_id)
        if note is not None:
            item["note"] = {"text": note}
        if position is not None:
            collection["items"].remove(item)
            collection["items"].insert(position, item)
        for index, each in enumerate(collection["items"]):
            each["position"] = index
        self._write(collection)

    def delete_item(self, slug: str, object_id: str) -> None:
        collection = self._read(slug)
        collection["items"] = [i for i in collection["items"] if i["_id"] != object_id]
        for index, each in enumerate(collection["items"]):
            each["position"] = index
        self._write(collection)


def store_for(target):
    """The Collections of a target: the Hub's, or a local folder's files."""
    if isinstance(target, Hub):
        return HubCollections(target)
    if isinstance(target, LocalFolder):
        return FolderCollections(target.root)
    raise UserError(f"{target.description} keeps no collections")


def sync_all(target, builds: list[BuildFigures], report_repo: str | None, log=print) -> list[Changes]:
    """One Collection per (namespace, base model) of the published builds. Titles are checked first: an
    impossible title changes nothing anywhere."""
    groups = wanted_items(builds, report_repo)
    for _, model in groups:
        check_title(title_for(model))
    store = store_for(target)
    done = []
    for (namespace, model), items in sorted(groups.items()):
        title = title_for(model)
        changes = sync(store, namespace, title, items,
                       f"Every low-bit build of {model} the factory publishes, with the report.")
        if changes.unchanged:
            log(f"  collection {changes.slug}: unchanged ({len(items)} items)")
        else:
            log(f"  collection {changes.slug}: {len(changes.added)} added, {len(changes.updated)} notes updated, "
                f"{len(changes.removed)} removed" + (", reordered" if changes.moved else ""))
        done.append(changes)
    return done
