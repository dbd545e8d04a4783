"""Request ids, the log's format, and one access-log line per request.

Every line the service logs goes through ``SafeFormatter`` (``LOG_FORMAT=text``,
the default) or ``SafeJsonFormatter`` (``LOG_FORMAT=json``: one JSON object per
line, by python-json-logger). Either way the line is cleared of secrets
(``streamchat.redaction``), tracebacks included, and stays one line: the text
format escapes control characters, and in the access line quotes every value a
client controls when it holds anything but visible ASCII, so it cannot pass
for another field; JSON escapes them itself.

An access line is logged as an ``AccessLine``: its fields, which the text
format writes as ``key=value`` and the JSON format as the object's keys.

A streamed reply is logged by ``log_reply``, a ``Relay`` listener, when the
reply closes: its ``ReplyRecord`` carries the request's own fields (``Caller``).
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

from ...domain.record import Caller, ReplyRecord
from ...logformat import JsonLines
from ...redaction import one_line, redact
from ..service import service

log = logging.getLogger("streamchat")
access_log = logging.getLogger("streamchat.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LOGGED_USER_TEXT_CHARS = 500
_PLAIN_VALUE = re.compile(r'[\x21-\x7e]*')
#: Fields written quoted and escaped already (``repr``): one value, one line.
QUOTED_FIELDS = frozenset({"user_text"})


class AccessLine:
    """One request's access-log fields; as a log message, the ``key=value`` line."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]):
        self.fields = fields

    def __str__(self) -> str:
        return " ".join(f"{key}={_value(key, value)}" for key, value in self.fields.items())


class SafeFormatter(logging.Formatter):
    """A formatter whose messages stay on one line and whose output never carries a secret."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return redact(super().formatMessage(record))

    def formatException(self, ei) -> str:
        return redact(super().formatException(ei))


class SafeJsonFormatter(JsonLines):
    """One JSON object per line: time, level, logger, message, and an access line's fields as keys."""

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        if isinstance(record.msg, AccessLine):
            log_data["message"] = "request"
            log_data.update(record.msg.fields)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def init_app(app: Flask) -> None:
    """Give every request an id, and log every request that is not a streamed reply when it closes."""
    app.before_request(_start_request)
    app.after_request(_finish_request)


def configure_logging(log_format: str = "text") -> None:
    """Send the service's logs (and flask-limiter's warnings) to stdout, once per process."""
    if getattr(log, "_configured", False):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(SafeJsonFormatter() if log_format == "json"
                         else SafeFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
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


def caller(service_key: str | None = None, user_text: str | None = None) -> Caller:
    """Return this request's fields for its reply's record: what the access line shows besides the reply."""
    # Only what the log line shows of the user's text: the whole message would stay in memory while the reply streams.
    return Caller(request_id=g.get("request_id", "-"), method=request.method, path=request.path,
                  endpoint=_endpoint(), client=request.remote_addr or "-", service_key=service_key,
                  user_text=user_text[:LOGGED_USER_TEXT_CHARS] if user_text is not None else None)


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
        metrics, endpoint = service().metrics, _endpoint()
        response.call_on_close(lambda: _request_closed(fields, started, metrics, endpoint))
    return response


def _endpoint() -> str:
    # The route, not the path: a stream id in a path must not become a metrics label of its own.
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"


def _request_closed(fields: dict[str, Any], started: float, metrics, endpoint: str) -> None:
    fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
    access_log.info(AccessLine(fields))
    if metrics is not None:
        metrics.request_finished(endpoint, fields["status"])


def _value(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if key in QUOTED_FIELDS:
        return repr(value)
    # A path or method is the client's: quoted (JSON, one line) unless it is plain visible ASCII.
    text = str(value)
    return text if _PLAIN_VALUE.fullmatch(text) and '"' not in text else json.dumps(text)


def log_reply(record: ReplyRecord) -> None:
    """Write the access line of a streamed reply (a ``Relay`` listener)."""
    asked = record.caller
    if asked is None:
        return  # not a web request's reply
    started, first, now = record.started, record.first_byte_at, record.ended_at or time.perf_counter()
    line: dict[str, Any] = {"request_id": asked.request_id, "method": asked.method, "path": asked.path,
                            "status": asked.status, "client": asked.client}
    if asked.service_key is not None:
        line["service_key"] = asked.service_key  # the key's id (a digest), never the key
    line.update(mode=record.mode, provider=record.provider, model=record.model or "-",
                reason=record.reason or record.cut_reason or "-",
                ttfb_ms=round((first - started) * 1000, 1) if first else None,
                duration_ms=round((now - started) * 1000, 1), chunks=record.chunks, bytes=record.bytes,
                ended=record.ended, failures=",".join(f"{p}:{r}" for p, r in record.failures) or "-")
    if record.mode == "live":
        line.update(input_tokens=record.input_tokens, output_tokens=record.output_tokens,
                    tokens_estimated=record.tokens_estimated)
    if record.cache:
        line["cache"] = record.cache
    if record.hedge:
        line["hedge"] = f"{record.hedge}:{'won' if record.hedge_won else 'lost'}"
    if record.rule:
        line["rule"] = record.rule
    if asked.user_text is not None:
        line["user_text"] = asked.user_text
    access_log.info(AccessLine(line))
