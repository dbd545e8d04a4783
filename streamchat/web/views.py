"""The chat blueprint: the page, the streaming chat endpoint and the health check."""

from __future__ import annotations

import functools

from flask import Blueprint, Response, g, jsonify, render_template, request
from werkzeug.exceptions import NotFound

from ..domain.relay import ReplyRecord
from ..domain.validation import InvalidRequest, Limits, parse_chat_request
from ..server.disconnect import watch_client
from ..server.drain import DRAIN
from ..redaction import url_without_secrets
from .access import request_started, request_tags
from .limits import limit_chat, release_tokens, reserve_tokens, storage_health
from .metrics import CONTENT_TYPE, token_matches
from .service import service
from ..shared.redis import ERRORS
from ..shared.streams import BadOffset, UnknownStream
from .errors import error_response
from .request_body import request_body_within
from .resume import recorded_response, replay_response
from .streaming import plain_text, reply_response

bp = Blueprint("chat", __name__)


def _unknown_stream() -> InvalidRequest:
    return InvalidRequest(404, "unknown_stream", "No reply with this id: it never was, or it expired.")


def _streams():
    streams = service().streams
    if streams is None:  # RESUME_TTL=0: nothing is recorded, so no id is known
        raise UnknownStream("replies are not recorded (RESUME_TTL=0)")
    return streams


def _reading_records(view):
    """Answer 404 for an unknown id, and 503 while the records' Redis is away (the chat keeps answering)."""

    @functools.wraps(view)
    def reading(*args, **kwargs):
        try:
            return view(*args, **kwargs)
        except UnknownStream:
            raise _unknown_stream() from None
        except ERRORS:
            return error_response(503, "records_unavailable", "Replies cannot be read again right now; try again soon.")

    return reading


@bp.get("/")
def index():
    """Serve the chat page, with the conversation limits it must keep to."""
    return render_template("index.html", **chat_markup_values(service().settings))


def chat_markup_values(settings) -> dict:
    """What ``_chat.html`` shows: the limits the chat keeps to, and the site owner's words."""
    return {"max_messages": settings.chat_max_messages, "max_chars": settings.chat_max_chars,
            "title": settings.chat_title, "greeting": settings.chat_greeting, "suggestions": settings.chat_suggestions}


@bp.post("/api/chat")
@limit_chat
def chat():
    """Stream the assistant's reply to the conversation in the request body."""
    svc = service()
    settings = svc.settings
    # No name keeps the body once it is parsed: while the first token is awaited, a stream holds the
    # conversation once, not also as the JSON it came in (up to six bytes a character: "\u00e9").
    messages = parse_chat_request(request_body_within(settings.client_timeout), request.content_type,
                                  Limits(settings.chat_max_messages, settings.chat_max_chars))
    record = ReplyRecord(started=request_started(),
                         tags=request_tags(messages[-1]["content"] if settings.log_user_text else None))
    live_denied = svc.budget.live_denied()
    live_denied = reserve_tokens(svc.tokens, record, messages, settings, None,
                                 live_possible=live_denied is None and bool(svc.relay.chain)) or live_denied
    grace = settings.resume_grace if svc.streams is not None else 0
    # With a grace period the reply outlives its client, so a client that leaves must not end it at once.
    watch = watch_client(request.environ) if not grace else None
    try:
        reply = svc.relay.open(messages, on_close=watch.stop if watch else None, live_denied=live_denied,
                               record=record)
    except BaseException:
        release_tokens(svc.tokens, record)
        raise
    g.reply_record = record  # logged by its listener when the reply closes
    if svc.streams is None:
        return reply_response(reply, plain_text, "text/plain; charset=utf-8")
    return recorded_response(reply, plain_text, "text/plain; charset=utf-8", svc.streams, grace)


@bp.get("/api/chat/streams/<stream_id>")
@limit_chat
@_reading_records
def resume(stream_id: str):
    """Stream a reply again from byte ``offset`` (default 0) of its body, then live until it ends."""
    raw = request.args.get("offset", "0")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 15:  # "²".isdigit() is true too
        raise InvalidRequest(400, "invalid_offset", "offset must be a whole number of bytes, 0 or more.")
    try:
        response = replay_response(_streams(), stream_id, int(raw))
    except BadOffset as exc:
        raise InvalidRequest(400, "invalid_offset", f"{str(exc).capitalize()}.") from None
    if service().metrics is not None:
        service().metrics.resumes.inc()
    return response


@bp.get("/api/chat/streams/<stream_id>/status")
@_reading_records
def stream_status(stream_id: str):
    """Say whether a reply is still streaming, how it ended, and how many bytes it has."""
    info = _streams().info(stream_id)
    body = {"state": info.state, "bytes": info.bytes, "mode": info.headers.get("X-Terminal-Mode")}
    if info.cut_reason:
        body["reason"] = info.cut_reason
    return jsonify(body)


@bp.post("/api/chat/streams/<stream_id>/stop")
@limit_chat
@_reading_records
def stop(stream_id: str):
    """Stop a reply wherever it streams: it ends as ``stopped``; a finished one stays as it ended."""
    before = _streams().stop(stream_id)
    if before == "streaming" and service().metrics is not None:
        service().metrics.stops.inc()
    return jsonify({"state": before, "stopping": before == "streaming"}), 202


def resume_health(svc) -> dict:
    """Report where reply records live, and so which resumes can succeed."""
    if svc.streams is None:
        return {"store": "none: RESUME_TTL=0, replies are not recorded"}
    health = svc.streams.health()
    if not svc.streams.shared:
        health["note"] = ("this worker's replies only: with several workers a resume that reaches another one "
                          "gets a 404")
    return health


def shared_health(svc) -> dict:
    """Report what this worker shares with the others (``REDIS_URL``), and whether it can now."""
    url = svc.settings.redis_url
    if not url:
        return {"redis": "none", "healthy": True,
                "note": "each worker process keeps its own circuit breaker (and, without RATELIMIT_STORAGE_URI, "
                        "its own rate-limit counts): set REDIS_URL to share them"}
    health = getattr(svc.relay.breaker, "health", None)
    return {"redis": url_without_secrets(url), **(health() if health else {"healthy": True})}


@bp.get("/metrics")
def metrics():
    """Serve every worker's metrics to a Prometheus scraper that sends the METRICS_TOKEN."""
    svc = service()
    if svc.metrics is None:
        raise NotFound()  # off: METRICS_TOKEN is not set
    if not token_matches(request.headers.get("Authorization"), svc.settings.metrics_token):
        return error_response(401, "unauthorized", "Send Authorization: Bearer <METRICS_TOKEN>.",
                              {"WWW-Authenticate": 'Bearer realm="metrics"'})
    return Response(svc.metrics.exposition(), content_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})


@bp.get("/readyz")
def readyz():
    """Say whether a load balancer should send requests here: not while draining, nor with no rules ever loaded."""
    if DRAIN.draining:
        return jsonify({"status": "draining"}), 503
    if not service().relay.rules.health()["loaded"]:
        return jsonify({"status": "no_rules", "note": "no rules file could be loaded: see /healthz"}), 503
    return jsonify({"status": "ready"})


@bp.get("/healthz")
def healthz():
    """Report whether the service is up and which providers and rules it uses (never a key)."""
    svc = service()
    body = {"status": "ok", **svc.relay.health(), "rate_limit": storage_health(svc.budget),
            "token_budget": svc.tokens.health() if svc.tokens else {"budget": "none"},
            "shared": shared_health(svc), "resume": resume_health(svc)}
    if (body["rules"]["error"] or not body["rate_limit"]["healthy"] or not body["shared"]["healthy"]
            or not body["resume"].get("healthy", True) or not body["token_budget"].get("healthy", True)):
        body["status"] = "degraded"
    return jsonify(body)
