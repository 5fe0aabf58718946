"""What leaves the factory carries no secret and no local path.

`scrub(text)` removes the Hugging Face token from any text: its exact value (HF_TOKEN,
HUGGING_FACE_HUB_TOKEN, the stored `hf auth login` token), any `Bearer ...` credential and any
`Authorization:` header value, whatever a server echoed back. It is applied where errors become
messages (errors.first_line, the CLI's error printing, hub.py's server messages), where they
are written to files (the manifest) and to every log record (install_log_scrubber).

`LocalPaths.scrub(text)` replaces this machine's absolute paths (the workdir, the build, the base
model, the bundled task data, the caches, the Python environment, the home folder, and any other
absolute path that names the user) with placeholders such as `<workdir>`, `<model>`,
`<bundled-tasks>` and `~`. `push` applies it to every text file it publishes (factory.stages.push).
"""

from __future__ import annotations

import functools
import getpass
import logging
import os
import re
import sys
from typing import Iterable

from factory.core.paths import DATA_DIR, EVAL_TASKS_DIR, PACKAGE_DIR, cache_root

MASK = "***"
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_BEARER = re.compile(r"(?i)\b(bearer)(\s+|%20|\+)[^\s\"'\\,;)}\]<>]+")
_AUTH_HEADER = re.compile(r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?)(?!bearer\b)[^\s\"'\\,;)}\]<>]+")
_HF_TOKEN_SHAPE = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")  # the Hub's user access tokens
# A path starts at the start of a string, after a quote, a space, `=`, `(`, `[`...: not inside a name or a URL.
_NOT_INSIDE_A_NAME = r"(?<![\w.:/~-])"
_ABSOLUTE = re.compile(_NOT_INSIDE_A_NAME + r"/[^\s\"'<>|,;:*?\\]+")


def known_tokens() -> list[str]:
    """Every token value this process could send: the environment's and the stored login's."""
    tokens = {os.environ.get(name, "").strip() for name in TOKEN_VARIABLES}
    tokens.add(_stored_token())
    return sorted((t for t in tokens if len(t) >= 6), key=len, reverse=True)


def _stored_token() -> str:
    """The token `hf auth login` stored (read like huggingface_hub does, without importing it)."""
    path = os.environ.get("HF_TOKEN_PATH")
    if not path:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
        path = os.path.join(os.path.expanduser(home), "token")
    try:
        stamp = (path, os.stat(path).st_mtime_ns)
        if _stored_cache.get("stamp") != stamp:
            with open(path, encoding="utf-8") as f:
                _stored_cache.update(stamp=stamp, token=f.read(4096).strip())
        return _stored_cache["token"]
    except (OSError, UnicodeDecodeError):
        return ""


_stored_cache: dict = {}


def scrub(text: str, tokens: Iterable[str] | None = None) -> str:
    """`text` without any credential: token values, `Bearer ...`, `Authorization: ...`."""
    if not text:
        return text
    for token in tokens if tokens is not None else known_tokens():
        if token:
            text = text.replace(token, MASK)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{MASK}", text)
    return _HF_TOKEN_SHAPE.sub("hf_" + MASK, text)


_factory_installed = False


def install_log_scrubber() -> None:
    """Scrub every log record this process makes, from any library and whatever its handler
    (installed once, as the logging module's record factory)."""
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def make_record(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler
            return record
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    logging.setLogRecordFactory(make_record)
    _factory_installed = True


# ---------------------------------------------------------------- local paths


class LocalPaths:
    """This machine's absolute paths and the placeholders published files show instead."""

    def __init__(self, places: Iterable[tuple[str | os.PathLike | None, str]] = ()) -> None:
        pairs: dict[str, str] = {}
        for path, placeholder in [*places, *default_places()]:
            if not path:
                continue
            for form in _forms(path):
                if len(form) > 1 and form not in pairs:  # the first (most specific) name wins
                    pairs[form] = placeholder
        # Longest first: a build folder inside the workdir is named as the build, not the workdir.
        self.pairs = sorted(pairs.items(), key=lambda item: len(item[0]), reverse=True)
        self._names = {form: placeholder for form, placeholder in self.pairs}
        self._pattern = re.compile(
            _NOT_INSIDE_A_NAME + "(?:" + "|".join(re.escape(form) for form, _ in self.pairs) + ")(?![A-Za-z0-9_.-])"
        ) if self.pairs else None
        self._user = _user_name() if len(_user_name()) >= 3 else ""

    def scrub(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(lambda m: self._names[m.group(0)], text)
        if self._user:
            # Any other absolute path with the user's name in it (e.g. /tmp/pytest-of-NAME/...).
            text = _ABSOLUTE.sub(lambda m: "<local-path>" if self._user in m.group(0) else m.group(0), text)
        return text

    def found(self, text: str) -> bool:
        """Whether `text` holds a local path (what scrub replaces)."""
        return self.scrub(text) != text


def _forms(path: str | os.PathLike) -> list[str]:
    """The path as given, absolute, and with symlinks resolved (each a separate spelling in files)."""
    raw = os.fspath(path)
    forms = [raw] if os.path.isabs(raw) else []
    try:
        forms += [os.path.abspath(raw), os.path.realpath(raw)]
    except (OSError, ValueError):
        pass
    return [f.rstrip("/") or "/" for f in dict.fromkeys(forms) if f not in ("/", "")]


@functools.cache
def _user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (some containers)
        return ""


def default_places() -> list[tuple[str, str]]:
    """Paths every build shares: the factory's own files, the caches, the Python environment, home."""
    places: list[tuple[str, str]] = [
        (str(EVAL_TASKS_DIR), "<bundled-tasks>"),
        (str(DATA_DIR), "<factory-data>"),
        (str(PACKAGE_DIR), "<factory>"),
    ]
    places.append((str(cache_root()), "<factory-cache>"))
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    places += [(os.environ.get("HF_HUB_CACHE", ""), "<hf-cache>"), (hf_home, "<hf-home>")]
    if sys.prefix != sys.base_prefix:  # a virtual environment (a bare /usr would be too broad)
        places.append((sys.prefix, "<python-env>"))
    home = os.path.expanduser("~")
    if home not in ("/", ""):
        places.append((home, "~"))
    return places
