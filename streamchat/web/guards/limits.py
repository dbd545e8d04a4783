"""The hard rate limits, and who the client is.

``limiter`` (flask-limiter) holds the hard per-client limit on ``POST /api/chat``
(``CHAT_RATE_LIMIT``, counted by ``chat_counts`` in one call with the budgets) and
per key on ``/v1`` (``API_RATE_LIMIT``); over it the client gets a 429 with
``Retry-After`` (on ``/v1`` before its body is read). Counts live in
``RATELIMIT_STORAGE_URI``: ``memory://`` counts per worker process
(``counters.ExpiringCounters``), ``redis://`` shares one count across workers
and machines. While Redis is unreachable each worker counts in its own memory
(``failsoft.FailSoftStorage``), logs it once and ``/healthz`` says so: the chat
keeps answering.

The client is the peer address, or with ``TRUSTED_PROXIES=N`` the address N
proxies back in ``X-Forwarded-For`` (werkzeug's ``ProxyFix``, see ``headers.py``),
so a client cannot reset its count by sending its own header. On the ``/v1``
API the client is the service key.
"""

from __future__ import annotations

import functools
import logging
import time

from flask import Flask, request
from flask_limiter import Limiter
from werkzeug.exceptions import TooManyRequests

from ...config import Settings
from ...redaction import url_without_secrets
from ..service import service
from . import failsoft
from .api_keys import key_id
from .counters import SCHEME

log = logging.getLogger("streamchat")


def client_id() -> str:
    """Return who the client is: the peer address (ProxyFix-corrected)."""
    return request.remote_addr or "unknown"


def api_client_id() -> str:
    """Return who calls the ``/v1`` API, for its rate limit: the key's id, or the address for a request without
    a valid key (guessing keys is rate limited too). Runs before the view, in flask-limiter's hook."""
    return key_id(request.headers.get("Authorization"), _settings().service_api_keys) or request.remote_addr or "unknown"


# No in_memory_fallback: FailSoftStorage never raises, so flask-limiter's own fallback (a traceback per
# request in flight, and memory counts kept after Redis returns) never runs.
limiter = Limiter(key_func=client_id, headers_enabled=True, swallow_errors=True)


def _settings() -> Settings:
    return service().settings


def chat_rate_limit() -> str:
    return _settings().chat_rate_limit or "1/second"  # unused when rate_limit_off()


def rate_limit_off() -> bool:
    return not _settings().chat_rate_limit


def limit_api(view):
    """Decorate a ``/v1`` view with ``API_RATE_LIMIT``, per service key."""
    limited = limiter.limit(lambda: _settings().api_rate_limit or "1/second", key_func=api_client_id,
                            exempt_when=lambda: not _settings().api_rate_limit)(view)

    @functools.wraps(view)
    def api_view(*args, **kwargs):
        return (limited if limiter.enabled else view)(*args, **kwargs)

    return api_view


def limit_chat(view):
    """Decorate a view of a reply (resuming and stopping it) with ``CHAT_RATE_LIMIT``, each its own count.

    The chat itself counts its rate limits with its budgets, in one round trip (``chat_counts``).

    flask-limiter is skipped outright while it is disabled.

    flask-limiter's decorator looks its limits up on every call even when the limiter is disabled
    (nothing is counted, see ``counting``): 50 us of a chat request's 530 (measured in-process).
    """
    limited = limiter.limit(chat_rate_limit, methods=["POST", "GET"], exempt_when=rate_limit_off)(view)

    @functools.wraps(view)
    def chat_view(*args, **kwargs):
        return (limited if limiter.enabled else view)(*args, **kwargs)

    return chat_view


def counting(settings: Settings) -> bool:
    """Whether anything is counted: a rate limit on the chat or the API, or a live-model budget."""
    return bool(settings.chat_rate_limit or settings.llm_budget_per_client or settings.llm_budget_global
                or api_limited(settings))


def api_limited(settings: Settings) -> bool:
    return bool(settings.service_api_keys and settings.api_rate_limit)


def storage_health() -> dict:
    """Report whether the rate-limit storage answers (never its password)."""
    settings = _settings()
    uri = settings.ratelimit_storage_uri
    shown = url_without_secrets(uri)
    if not counting(settings):
        return {"storage": "none: no rate limit and no budget", "shared": False, "healthy": True}
    storage = limiter.storage if limiter.enabled else service().budget.storage()
    try:
        healthy = bool(storage.check())  # FailSoftStorage: whether this worker counts in Redis right now
    except Exception:
        healthy = False
    info = {"storage": shown, "shared": not uri.startswith("memory://"), "healthy": healthy}
    if not healthy:
        outage = getattr(storage, "outage", None)
        info["error"] = (outage.health().get("error") if outage and outage.down else
                         "rate-limit storage unreachable: this worker counts in its own memory")
    return info


def rate_limit_message(error: TooManyRequests) -> tuple[str, str, str]:
    """Return the 429 answer's code, sentence and Retry-After for the limit just breached."""
    wait = getattr(error, "retry_after", None) or _retry_after_seconds()  # the chat's own (chat_counts), or flask-limiter's
    return "rate_limited", f"Too many requests ({error.description}). Try again in {wait} seconds.", str(wait)


def _retry_after_seconds() -> int:
    # The seconds until the breached limit resets, rounded as flask-limiter's Retry-After header is.
    current = limiter.current_limit
    if current is None:
        return 60
    return max(1, int(current.reset_at - time.time()))


def storage_config(settings: Settings) -> tuple[str, dict]:
    """Return the ``limits`` storage URI and options for the configured storage: memory, or fail-soft shared."""
    uri = settings.ratelimit_storage_uri
    if uri.startswith("memory://"):
        return f"{SCHEME}://", {}
    options = {}
    if uri.startswith(("redis://", "rediss://")):
        # Fail fast when Redis is down, so a request waits half a second at most.
        options = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
    return failsoft.PREFIX + uri, options


def init_app(app: Flask, settings: Settings) -> None:
    """Bind the limiter to ``app`` with the configured storage, if there is a rate limit."""
    uri, options = storage_config(settings)
    app.config["RATELIMIT_STORAGE_URI"] = uri
    app.config["RATELIMIT_STORAGE_OPTIONS"] = options
    # Without a rate limit flask-limiter stays off: its hooks alone cost 190-450 µs a request
    # (measured in-process, against 540-900 µs for the rest of a fallback reply).
    app.config["RATELIMIT_ENABLED"] = bool(settings.chat_rate_limit or api_limited(settings))
    limiter.init_app(app)
