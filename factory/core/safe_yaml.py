"""Bounded, strict YAML loading for recipe files.

`yaml.safe_load` expands aliases without limit (a few hundred bytes of nested anchors become
gigabytes), recurses once per nesting level (RecursionError on `[[[[...]]]]`), accepts
duplicate keys silently (the last one wins) and takes any amount of input. Recipes need none
of that, so this module reads one YAML document in a single pass over PyYAML's parser events,
with an explicit stack (no recursion), and refuses, before building anything from them:

- anchors and aliases (so merge keys `<<: *base` too), and merge keys in any form;
- tags other than the standard scalar ones (`!!str`, `!!int`, `!!float`, `!!bool`, `!!null`);
- mapping keys that are not strings (`{1: x}`, `true: x`, `? [a, b]: 1`) and duplicate keys;
- more than MAX_DEPTH nested collections, more than MAX_NODES nodes, more than MAX_BYTES of
  text, and numbers longer than MAX_NUMBER_CHARS (YAML 1.1 base-60 integers such as
  `1:2:3:...` take quadratic time to convert).

Scalars are resolved and converted by PyYAML's SafeLoader itself (YAML 1.1: `0x10` is 16,
`yes`/`on` are booleans, `1e26` is a string, `2024-01-01` a date), so accepted files give
exactly what `yaml.safe_load` gives. Invalid YAML is reported as YamlRejected too (message
`invalid YAML: <problem>` at the problem's line), so callers handle a single exception type.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import yaml
from yaml.events import (AliasEvent, CollectionStartEvent, MappingEndEvent, MappingStartEvent, ScalarEvent,
                         SequenceEndEvent, StreamEndEvent)
from yaml.nodes import ScalarNode

MAX_BYTES = 1024 * 1024          # recipes are a few hundred bytes
MAX_DEPTH = 32                   # nested collections; recipes use about 5
MAX_NODES = 100_000              # scalars and collections, keys included
MAX_NUMBER_CHARS = 1000          # longest int/float scalar converted

_T = "tag:yaml.org,2002:"
STR, MERGE = _T + "str", _T + "merge"
# Explicit tags a recipe may carry; all other tags (!!python/..., !!set, !foo, ...) are refused.
ALLOWED_TAGS = {_T + t for t in ("str", "int", "float", "bool", "null")}
# What plain scalars may resolve to (SafeLoader's implicit resolvers, less merge and value).
IMPLICIT_TAGS = ALLOWED_TAGS | {_T + "timestamp"}


class YamlRejected(Exception):
    """A recipe file refused before or while reading it: `source:line: message`."""

    def __init__(self, source: str, line: int | None, message: str):
        super().__init__(f"{source}{f':{line}' if line else ''}: {message}")
        self.source = source
        self.line = line  # 1-based, or None when the problem has no line (file size, encoding)
        self.message = message  # one line


def read_recipe_text(path: str | os.PathLike, source: str | None = None) -> str:
    """Read a recipe file as UTF-8 text, refusing non-regular, oversized and non-UTF-8 files.

    The size is checked from stat before reading and the read itself is bounded, so a huge
    (or growing, or device) file is never read entirely. OSError becomes YamlRejected.
    """
    source = str(path) if source is None else source
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise YamlRejected(source, None, "not a regular file")
        if info.st_size > MAX_BYTES:
            raise _too_big(source)
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise YamlRejected(source, None, f"cannot read the file: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise _too_big(source)
    return _decode(data, source)


def _too_big(source: str) -> YamlRejected:
    return YamlRejected(source, None, f"recipe file is larger than {MAX_BYTES // 1024 // 1024} MiB")


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise YamlRejected(source, line, f"not a UTF-8 text file (byte 0x{data[exc.start]:02x})") from None


def load_yaml_document(text: str | bytes, source: str = "<recipe>") -> tuple[Any, dict[tuple, int]]:
    """Parse one YAML document into plain data and its line index, or raise YamlRejected.

    Returns (data, lines): data as `yaml.safe_load` gives it (None for an empty document);
    lines maps each key path, e.g. ('models', 0, 'id'), to its 1-based line: a mapping key's
    path to the key's line, a sequence item's path to the item's first line, () to the root.
    """
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise _too_big(source)
        text = _decode(text, source)
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise _too_big(source)
    try:
        loader = yaml.SafeLoader(text)  # checks for non-printable characters already
        try:
            return _load(loader, source)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise YamlRejected(source, _error_line(exc, text), f"invalid YAML: {_error_problem(exc)}") from exc


class _Frame:
    """An open collection: its container, key path and (mappings) the key awaiting a value."""

    __slots__ = ("container", "path", "key")

    def __init__(self, container: Any, path: tuple):
        self.container, self.path, self.key = container, path, None


def _load(loader: yaml.SafeLoader, source: str) -> tuple[Any, dict[tuple, int]]:
    def reject(event: yaml.Event, message: str) -> YamlRejected:
        return YamlRejected(source, event.start_mark.line + 1, message)

    lines: dict[tuple, int] = {}
    stack: list[_Frame] = []
    root: Any = None
    nodes = 0
    loader.get_event()  # StreamStartEvent
    if loader.check_event(StreamEndEvent):
        return None, lines
    loader.get_event()  # DocumentStartEvent
    while True:
        event = loader.get_event()
        if isinstance(event, (SequenceEndEvent, MappingEndEvent)):
            stack.pop()
            if not stack:
                break
            continue
        # A node: a scalar, an alias or the start of a collection.
        if isinstance(event, AliasEvent) or event.anchor is not None:
            raise reject(event, "YAML anchors and aliases are not allowed in recipes")
        if event.tag is not None and not (isinstance(event, ScalarEvent) and event.tag in ALLOWED_TAGS):
            raise reject(event, f"YAML tags are not allowed in recipes ({event.tag.replace(_T, '!!')})")
        nodes += 1
        if nodes > MAX_NODES:
            raise reject(event, f"more than {MAX_NODES} YAML nodes")
        parent = stack[-1] if stack else None
        is_key = parent is not None and isinstance(parent.container, dict) and parent.key is None
        line = event.start_mark.line + 1

        if isinstance(event, ScalarEvent):
            value = _scalar(loader, event, is_key, reject)
        else:  # CollectionStartEvent
            if is_key:
                raise reject(event, "mapping keys must be strings")
            if len(stack) >= MAX_DEPTH:
                raise reject(event, f"nested deeper than {MAX_DEPTH} levels")
            value = {} if isinstance(event, MappingStartEvent) else []

        # Attach the node to its parent and record its line.
        if parent is None:
            root, path = value, ()
            lines[path] = line
        elif isinstance(parent.container, list):
            path = (*parent.path, len(parent.container))
            lines[path] = line
            parent.container.append(value)
        elif is_key:
            path = (*parent.path, value)
            if value in parent.container:
                raise reject(event, f"duplicate key {value!r} (first at line {lines[path]})")
            lines[path] = line
            parent.key = value
            parent.container[value] = None  # keeps key order; the value replaces it below
            continue
        else:
            path = (*parent.path, parent.key)  # its line is the key's, already recorded
            parent.container[parent.key] = value
            parent.key = None

        if isinstance(event, CollectionStartEvent):
            stack.append(_Frame(value, path))
        elif parent is None:
            break  # the document is one scalar

    loader.get_event()  # DocumentEndEvent (the parser raises on anything else)
    if not loader.check_event(StreamEndEvent):
        # Like yaml.safe_load: one document per file (the second one is not parsed further).
        raise YamlRejected(source, loader.peek_event().start_mark.line + 1,
                           "invalid YAML: expected a single document in the stream, but found another document")
    return root, lines


def _scalar(loader: yaml.SafeLoader, event: ScalarEvent, is_key: bool, reject) -> Any:
    """Resolve and convert one scalar exactly as SafeLoader would, within the bounds above."""
    tag = event.tag
    if tag is None:
        tag = loader.resolve(ScalarNode, event.value, event.implicit)
    if tag == MERGE:
        raise reject(event, "YAML merge keys (<<) are not allowed in recipes")
    if is_key and tag != STR:
        raise reject(event, f"mapping keys must be strings (found {event.value!r}; quote it)")
    if tag not in IMPLICIT_TAGS:  # e.g. a plain `=` (YAML 1.1's value key), which safe_load refuses
        raise reject(event, f"unsupported YAML value {event.value!r} (quote it)")
    if tag in (_T + "int", _T + "float") and len(event.value) > MAX_NUMBER_CHARS:
        raise reject(event, f"number longer than {MAX_NUMBER_CHARS} characters")
    node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
    try:
        return loader.yaml_constructors[tag](loader, node)
    except Exception as exc:  # ValueError, KeyError, ... from e.g. `!!int abc` or `2024-13-45`
        raise reject(event, f"invalid {tag.rsplit(':', 1)[-1]} value {event.value!r}: {exc}") from None


def _error_line(exc: yaml.YAMLError, text: str) -> int | None:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return mark.line + 1
    position = getattr(exc, "position", None)  # ReaderError: a character offset
    return text.count("\n", 0, position) + 1 if isinstance(position, int) else None


def _error_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        return f"unacceptable character #x{exc.character:04x}: {exc.reason}" if isinstance(exc.character, int) \
            else str(exc).splitlines()[0]
    return getattr(exc, "problem", None) or str(exc).splitlines()[0]
