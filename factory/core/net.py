"""Every Hub call has a timeout and a bounded number of retries.

huggingface_hub 1.x sends every request through one shared `httpx.Client`, made by the factory
set with `huggingface_hub.set_client_factory` (its supported hook). Its own default client has
no timeout (`timeout=None`), and several HfApi methods pass `timeout=None` explicitly, so a
client-wide default is not enough: the transport installed here fills in every timeout a request
left unset (connect, read, write, pool) before sending it, and retries:

* a connection that could not be made (nothing was sent), for any request, and
* a read that timed out, for idempotent requests (GET, HEAD, OPTIONS) only; an upload or a
  commit is never sent twice by this layer (huggingface_hub retries its own LFS uploads).

Settings, read from the environment when the client is made:

FACTORY_HUB_TIMEOUT  seconds to wait for a connection, a read or a write (default 30; the connect
                     wait is at most 10 s). Also the default of huggingface_hub's own
                     HF_HUB_ETAG_TIMEOUT and HF_HUB_DOWNLOAD_TIMEOUT when those are not set.
FACTORY_HUB_RETRIES  extra attempts after a failed connection or a timed-out read (default 2).

So a Hub that accepts connections and never answers costs (1 + retries) x timeout per call, not
forever; and Ctrl-C interrupts a waiting call at once (the CLI does not wait for worker threads).
"""

from __future__ import annotations

import functools
import os
import threading
import time

from factory.core.env_settings import seconds_setting
from factory.core.errors import UserError

DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 2
MAX_CONNECT_TIMEOUT = 10.0
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})

_configured: tuple[float, int] | None = None
_lock = threading.Lock()


def hub_timeout() -> float:
    """FACTORY_HUB_TIMEOUT in seconds (default 30); one-line error for a value that is not a positive number."""
    return seconds_setting("FACTORY_HUB_TIMEOUT", DEFAULT_TIMEOUT, lambda v: 0 < v <= 3600,
                           "a number of seconds between 0 and 3600")


def hub_retries() -> int:
    """FACTORY_HUB_RETRIES (default 2), 0 to 10."""
    raw = os.environ.get("FACTORY_HUB_RETRIES", "").strip()
    if not raw:
        return DEFAULT_RETRIES
    if not raw.isdigit() or int(raw) > 10:
        raise UserError(f"FACTORY_HUB_RETRIES={raw!r}: must be a whole number from 0 to 10")
    return int(raw)


def set_library_timeouts() -> None:
    """huggingface_hub reads HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT when it is imported: default
    them to FACTORY_HUB_TIMEOUT for this process and its children (call before the import)."""
    seconds = str(max(1, round(hub_timeout())))
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", seconds)
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", seconds)


def configure_hub_client() -> None:
    """Install the timeout-and-retry client in huggingface_hub (once per settings; cheap to call again)."""
    global _configured
    settings = (hub_timeout(), hub_retries())
    if _configured == settings:
        return
    with _lock:
        if _configured == settings:
            return
        set_library_timeouts()
        from huggingface_hub import set_client_factory

        set_client_factory(lambda: make_client(*settings))
        _configured = settings


def make_client(timeout: float, retries: int):
    """An httpx.Client like huggingface_hub's default one (its request hook, redirects followed),
    with timeouts on every request and bounded retries."""
    import httpx
    from huggingface_hub.utils import _http

    hooks = {"request": [_http.hf_request_event_hook]} if hasattr(_http, "hf_request_event_hook") else {}
    limits = httpx.Timeout(timeout, connect=min(timeout, MAX_CONNECT_TIMEOUT))
    return httpx.Client(transport=_TimeoutRetryTransport(limits, retries), event_hooks=hooks,
                        follow_redirects=True, timeout=limits)


def _TimeoutRetryTransport(limits, retries: int):
    return _transport_class()(limits, retries)


@functools.cache
def _transport_class():
    import httpx

    class TimeoutRetryTransport(httpx.BaseTransport):
        """Around httpx.HTTPTransport: fills in unset timeouts, retries what is safe to retry."""

        def __init__(self, limits, retries: int) -> None:
            self._inner = httpx.HTTPTransport()
            self._limits = {"connect": limits.connect, "read": limits.read, "write": limits.write,
                            "pool": limits.pool}
            self._retries = retries

        def handle_request(self, request):
            asked = dict(request.extensions.get("timeout") or {})
            request.extensions["timeout"] = {k: (asked.get(k) if asked.get(k) is not None else v)
                                             for k, v in self._limits.items()}
            resendable = isinstance(request.stream, httpx.ByteStream)  # bytes or nothing: safe to send again
            attempt = 0
            while True:
                try:
                    return self._inner.handle_request(request)
                except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
                    if attempt >= self._retries or not resendable:
                        raise
                except httpx.ReadTimeout:
                    if attempt >= self._retries or request.method not in IDEMPOTENT:
                        raise
                attempt += 1
                time.sleep(min(0.5 * 2 ** (attempt - 1), 4.0))

        def close(self) -> None:
            self._inner.close()

    return TimeoutRetryTransport
