"""The chat blueprint: the page, the streaming chat endpoint and the health check."""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, render_template, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..domain.relay import ReplyRecord
from ..domain.validation import InvalidRequest, Limits, parse_chat_request
from ..server.disconnect import ClientTimeout, MalformedBody, read_body_within, watch_client
from ..redaction import url_without_secrets
from .access import request_started, request_tags
from .limits import limit_chat, storage_health
from .service import service
from .streaming import plain_text, reply_response

bp = Blueprint("chat", __name__)


@bp.get("/")
def index():
    """Serve the chat page, with the conversation limits it must keep to."""
    settings = service().settings
    return render_template("index.html", max_messages=settings.chat_max_messages, max_chars=settings.chat_max_chars)


@bp.post("/api/chat")
@limit_chat
def chat():
    """Stream the assistant's reply to the conversation in the request body."""
    svc = service()
    settings = svc.settings
    # No name keeps the body once it is parsed: while the first token is awaited, a stream holds the
    # conversation once, not also as the JSON it came in (up to six bytes a character: "\u00e9").
    messages = parse_chat_request(_request_body_within(settings.client_timeout), request.content_type,
                                  Limits(settings.chat_max_messages, settings.chat_max_chars))
    record = ReplyRecord(started=request_started(),
                         tags=request_tags(messages[-1]["content"] if settings.log_user_text else None))
    live_denied = svc.budget.live_denied()
    watch = watch_client(request.environ)
    reply = svc.relay.open(messages, on_close=watch.stop, live_denied=live_denied, record=record)
    g.reply_record = record  # logged by its listener when the reply closes
    return reply_response(reply, plain_text, "text/plain; charset=utf-8")


def shared_health(svc) -> dict:
    """Report what this worker shares with the others (``REDIS_URL``), and whether it can now."""
    url = svc.settings.redis_url
    if not url:
        return {"redis": "none", "healthy": True,
                "note": "each worker process keeps its own circuit breaker (and, without RATELIMIT_STORAGE_URI, "
                        "its own rate-limit counts): set REDIS_URL to share them"}
    health = getattr(svc.relay.breaker, "health", None)
    return {"redis": url_without_secrets(url), **(health() if health else {"healthy": True})}


def _request_body_within(seconds: float) -> bytes:
    try:
        return read_body_within(request.environ, _request_body, seconds)
    except ClientTimeout:
        raise InvalidRequest(408, "request_timeout", f"The request body did not arrive within {seconds:g} s.") from None
    except MalformedBody as exc:
        raise InvalidRequest(400, "invalid_body_framing",
                             f"The request body's chunked framing is broken ({exc}).") from None


def _request_body() -> bytes:
    body = request.get_data(cache=False)
    # A chunked body has no Content-Length: werkzeug stops reading it at MAX_CONTENT_LENGTH without a word,
    # and the cut JSON would be reported as malformed. One more byte on the wire means it was too large.
    if request.content_length is None and len(body) >= current_app.config["MAX_CONTENT_LENGTH"]:
        if request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    return body


@bp.get("/healthz")
def healthz():
    """Report whether the service is up and which providers and rules it uses (never a key)."""
    svc = service()
    body = {"status": "ok", **svc.relay.health(), "rate_limit": storage_health(svc.budget),
            "shared": shared_health(svc)}
    if body["rules"]["error"] or not body["rate_limit"]["healthy"] or not body["shared"]["healthy"]:
        body["status"] = "degraded"
    return jsonify(body)
