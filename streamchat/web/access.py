"""Request ids, the log's format, and one access-log line per request.

Every line the service logs goes through ``SafeFormatter``: its message is
kept on one line (control characters escaped) and cleared of secrets
(``streamchat.redaction``), tracebacks included. In the access line every
value a client controls is also quoted when it holds anything but visible
ASCII, so it cannot pass for another field.

A streamed reply is logged by ``log_reply``, a ``Relay`` listener, when the
reply closes: its ``ReplyRecord`` carries the request's own fields as tags.
Every other request (errors, the page, ``/healthz``) is logged when its
response closes.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from flask import Flask, g, request

from ..domain.relay import ReplyRecord
from ..redaction import one_line, redact
from .service import service

log = logging.getLogger("streamchat")
access_log = logging.getLogger("streamchat.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LOGGED_USER_TEXT_CHARS = 500
_PLAIN_VALUE = re.compile(r'[\x21-\x7e]*')
#: Fields written quoted and escaped already (``repr``): one value, one line.
QUOTED_FIELDS = frozenset({"user_text"})


class SafeFormatter(logging.Formatter):
    """A formatter whose messages stay on one line and whose output never carries a secret."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return redact(super().formatMessage(record))

    def formatException(self, ei) -> str:
        return redact(super().formatException(ei))


def init_app(app: Flask) -> None:
    """Give every request an id, and log every request that is not a streamed reply when it closes."""
    app.before_request(_start_request)
    app.after_request(_finish_request)


def configure_logging() -> None:
    """Send the service's logs (and flask-limiter's warnings) to stdout, once per process."""
    if getattr(log, "_configured", False):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    # flask-limiter warns here when its storage (Redis) is unreachable.
    limiter_log = logging.getLogger("flask-limiter")
    limiter_log.addHandler(handler)
    limiter_log.propagate = False
    log._configured = True  # type: ignore[attr-defined]


def request_started() -> float:
    """Return when this request began (``perf_counter``)."""
    return g.get("started") or time.perf_counter()


def request_tags(user_text: str | None) -> dict[str, Any]:
    """Return this request's fields for its reply's record: what the access line shows besides the reply."""
    tags: dict[str, Any] = {"request_id": g.get("request_id", "-"), "method": request.method, "path": request.path,
                            "status": 200, "client": request.remote_addr or "-"}
    if user_text is not None:
        # Only what the log line shows: the whole message would stay in memory while the reply streams.
        tags["user_text"] = user_text[:LOGGED_USER_TEXT_CHARS]
    return tags


def _start_request() -> None:
    g.started = time.perf_counter()
    incoming = request.headers.get("X-Request-Id", "")
    g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
    if not _forwarding_seen and "X-Forwarded-For" in request.headers:
        _warn_untrusted_forwarding()


_forwarding_seen = False  # once per process: the first X-Forwarded-For decides whether to warn


def _warn_untrusted_forwarding() -> None:
    # Behind a proxy with TRUSTED_PROXIES unset every visitor is the proxy: one rate-limit bucket for all.
    global _forwarding_seen
    _forwarding_seen = True
    if not service().settings.trusted_proxies:
        log.warning("requests carry X-Forwarded-For but TRUSTED_PROXIES is 0, so the client is the peer address "
                    "(%s): behind a proxy every visitor shares one rate limit. Set TRUSTED_PROXIES to the number "
                    "of proxies in front (Heroku: 1). Said once.", request.remote_addr)


def _finish_request(response):
    response.headers["X-Request-Id"] = g.get("request_id", "-")
    if g.get("reply_record") is None:  # a streamed reply is logged by log_reply when it closes
        fields = {"request_id": g.get("request_id", "-"), "method": request.method, "path": request.path,
                  "status": response.status_code, "client": request.remote_addr or "-"}
        started = g.get("started", time.perf_counter())
        response.call_on_close(lambda: _write_line(fields, started))
    return response


def _write_line(fields: dict[str, Any], started: float) -> None:
    _log_fields({**fields, "duration_ms": f"{(time.perf_counter() - started) * 1000:.1f}"})


def _log_fields(fields: dict[str, Any]) -> None:
    access_log.info(" ".join(f"{key}={value if key in QUOTED_FIELDS else _value(value)}"
                             for key, value in fields.items()))


def _value(value: Any) -> str:
    # A path or method is the client's: quoted (JSON, one line) unless it is plain visible ASCII.
    text = str(value)
    return text if _PLAIN_VALUE.fullmatch(text) and '"' not in text else json.dumps(text)


def log_reply(record: ReplyRecord) -> None:
    """Write the access line of a streamed reply (a ``Relay`` listener)."""
    tags = record.tags
    if "request_id" not in tags:
        return  # not a web request's reply
    started, first, now = record.started, record.first_byte_at, record.ended_at or time.perf_counter()
    line = {key: tags.get(key, "-") for key in ("request_id", "method", "path", "status", "client")}
    line.update(mode=record.mode, provider=record.provider, model=record.model or "-",
                reason=record.reason or record.cut_reason or "-",
                ttfb_ms=f"{(first - started) * 1000:.1f}" if first else "-",
                duration_ms=f"{(now - started) * 1000:.1f}", chunks=record.chunks, bytes=record.bytes,
                ended=record.ended, failures=",".join(f"{p}:{r}" for p, r in record.failures) or "-")
    if record.rule:
        line["rule"] = record.rule
    if "user_text" in tags:
        line["user_text"] = repr(tags["user_text"])
    _log_fields(line)
