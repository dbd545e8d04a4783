"""The chat API: ``POST /api/chat`` streams a reply as text/plain; ``/api/chat/streams/<id>`` reads it again or stops it.

The page, the widget and the AI SDK's ``TextStreamChatTransport`` speak it;
``POST /api/chat/ui`` answers the same body as the AI SDK's UI message stream
(``DefaultChatTransport``). Its parser is ``domain.validation.parse_chat_body``,
its framers ``framing.text`` and ``framing.ui_stream``; replies are recorded
(``X-Stream-Id``) while ``RESUME_TTL`` is on, under the SDK's chat id too, for
its resume request (``GET <path>/<chatId>/stream``: 204 with no reply in progress).
"""

from __future__ import annotations

import functools
import re

from flask import Blueprint, jsonify, request

from ...domain.insights import rating_of
from ...domain.validation import CHAT_ID, InvalidRequest, parse_chat_body, parse_rating
from ...shared.redis import redis_errors
from ...shared.streams import BadOffset, RecordsUnavailable, StreamRecords, UnknownStream
from ..errors import error_response
from ..framing import text, ui_stream
from ..framing.recorded import replay_response
from ..guards.chat_counts import counted_chat
from ..guards.limits import client_id, limit_chat
from ..guards.request_body import request_body_within
from ..opening import ChatRequest, chat_limits, open_reply
from ..service import service

bp = Blueprint("chat", __name__)
STREAM_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")  # what recorded.new_stream_id makes (32 characters)


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


#: How each chat path frames its reply, and the prefix of its records' names (a chat id is found per path).
FRAMINGS = {"text": (text.plain_text, text.CONTENT_TYPE, None),
            "ui": (ui_stream.ui_message_stream, ui_stream.CONTENT_TYPE, ui_stream.HEADERS)}


def _answer(framing: str):
    # No name keeps the body once it is parsed: while the first token is awaited, a stream holds the
    # conversation once, not also as the JSON it came in (up to six bytes a character: "\u00e9").
    chat = parse_chat_body(request_body_within(service().settings.client_timeout), request.content_type,
                           chat_limits())
    opened = open_reply(ChatRequest(chat.messages, client=client_id(), resumable=True))
    framer, content_type, extra = FRAMINGS[framing]
    return opened.stream(framer, content_type, extra, name=f"{framing}:{chat.chat_id}" if chat.chat_id else "")


@bp.post("/api/chat")
@counted_chat
def chat():
    """Stream the assistant's reply to the conversation in the request body, as text."""
    return _answer("text")


@bp.post("/api/chat/ui")
@counted_chat
def chat_ui():
    """Stream the assistant's reply to the conversation in the request body, as the AI SDK's UI message stream."""
    return _answer("ui")


@bp.get("/api/chat/<chat_id>/stream")
@limit_chat
@_reading_records
def resume_chat(chat_id: str):
    """Stream the reply in progress of the AI SDK's chat ``chat_id`` from its start, as text; 204 if none."""
    return _resume_chat("text", chat_id)


@bp.get("/api/chat/ui/<chat_id>/stream")
@limit_chat
@_reading_records
def resume_chat_ui(chat_id: str):
    """Stream the reply in progress of the AI SDK's chat ``chat_id`` from its start, as its UI stream; 204 if none."""
    return _resume_chat("ui", chat_id)


def _resume_chat(framing: str, chat_id: str):
    streams = service().streams
    stream_id = streams.named(f"{framing}:{chat_id}") if streams is not None and CHAT_ID.fullmatch(chat_id) else None
    try:
        if stream_id is None or streams.info(stream_id).state != "streaming":
            return "", 204
        return replay_response(streams, stream_id, 0)
    except UnknownStream:  # it expired a moment ago
        return "", 204


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




@bp.post("/api/chat/streams/<stream_id>/feedback")
@limit_chat
def feedback(stream_id: str):
    """Keep the visitor's rating of a reply (one per reply; the latest counts), while insights are on."""
    svc = service()
    if svc.insights is None:
        raise InvalidRequest(404, "insights_off", "Ratings are not kept here (INSIGHTS_RETENTION_DAYS=0).")
    rating = parse_rating(request_body_within(svc.settings.client_timeout), request.content_type)
    if not _rateable(svc, stream_id):
        raise _unknown_stream()
    svc.insights.add(rating_of(stream_id, rating))
    return jsonify({"rating": rating})


def _rateable(svc, stream_id: str) -> bool:
    """Whether a reply with this id was given: its record still lives, or its insights entry was kept."""
    if not STREAM_ID.fullmatch(stream_id):
        return False
    if svc.streams is not None:
        try:
            svc.streams.info(stream_id)
            return True
        except (UnknownStream, RecordsUnavailable):
            pass
    try:
        return svc.insights.knows(stream_id)
    except redis_errors():
        return False
