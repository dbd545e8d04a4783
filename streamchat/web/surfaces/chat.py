"""The chat API: ``POST /api/chat`` streams a reply as text/plain; ``/api/chat/streams/<id>`` reads it again or stops it.

The page, the widget and the AI SDK's text transport speak it. Its parser is
``domain.validation.parse_chat_request``, its framer ``framing.text``; replies
are recorded (``X-Stream-Id``) while ``RESUME_TTL`` is on.
"""

from __future__ import annotations

import functools

from flask import Blueprint, jsonify, request

from ...domain.validation import InvalidRequest, parse_chat_request
from ...shared.streams import BadOffset, RecordsUnavailable, StreamRecords, UnknownStream
from ..errors import error_response
from ..framing import text
from ..framing.recorded import replay_response
from ..guards.chat_counts import counted_chat
from ..guards.limits import client_id, limit_chat
from ..guards.request_body import request_body_within
from ..opening import ChatRequest, chat_limits, open_reply
from ..service import service

bp = Blueprint("chat", __name__)


def _unknown_stream() -> InvalidRequest:
    return InvalidRequest(404, "unknown_stream", "No reply with this id: it never was, or it expired.")


def _streams() -> StreamRecords:
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
        except RecordsUnavailable:
            return error_response(503, "records_unavailable", "Replies cannot be read again right now; try again soon.")

    return reading


@bp.post("/api/chat")
@counted_chat
def chat():
    """Stream the assistant's reply to the conversation in the request body."""
    # No name keeps the body once it is parsed: while the first token is awaited, a stream holds the
    # conversation once, not also as the JSON it came in (up to six bytes a character: "\u00e9").
    messages = parse_chat_request(request_body_within(service().settings.client_timeout), request.content_type,
                                  chat_limits())
    opened = open_reply(ChatRequest(messages, client=client_id(), resumable=True))
    return opened.stream(text.plain_text, text.CONTENT_TYPE)


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


