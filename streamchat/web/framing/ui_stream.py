"""The AI SDK's UI message stream (``DefaultChatTransport``, protocol ``v1``): a reply as ``useChat`` reads it.

Server-Sent Events, each ``data:`` a UI message chunk::

    start       {messageId, messageMetadata: {mode, reason, provider, model, streamId, cache}}
    text-start  {id}
    text-delta  {id, delta}            one a piece of text, as it comes
    text-end    {id}
    finish      {messageMetadata: {..., ended: "complete" | "cut_short"}}
    [DONE]

An SSE comment while the model is silent keeps proxies from timing the stream out.
A fallback reply is text like any other, its mode in the metadata; a reply cut
short ends with the notice as text and says so in the metadata, never with an
``error`` chunk (``useChat`` would show an error where the service promises a
reply).
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Iterator

from ...domain.record import CUT_SHORT
from ...domain.relay import Reply
from .text import cut_short_notice

CONTENT_TYPE = "text/event-stream; charset=utf-8"
#: What the SDK's transport checks for (``UI_MESSAGE_STREAM_HEADERS`` in ``ai``).
HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}
TEXT_ID = "text-1"


def metadata(reply: Reply) -> dict[str, Any]:
    """The message metadata: who answered, and the stream id to stop or resume it by."""
    record = reply.record
    data = {"mode": record.mode, "reason": record.reason or None, "provider": record.provider,
            "model": record.model or None, "streamId": record.stream_id or None}
    if record.cache:
        data["cache"] = record.cache
    return data


def ui_message_stream(reply: Reply) -> Iterator[bytes]:
    """Frame ``reply`` as the UI message stream ``useChat``'s default transport reads."""
    record = reply.record
    yield _event({"type": "start", "messageId": "msg-" + secrets.token_urlsafe(12),
                  "messageMetadata": metadata(reply)})
    yield _event({"type": "text-start", "id": TEXT_ID})
    # Every delta is this prefix, the text, this suffix: one json.dumps of the text per piece.
    prefix, suffix = b'data: {"type":"text-delta","id":"' + TEXT_ID.encode() + b'","delta":', b"}\n\n"
    for text in reply.text():
        if not text:
            yield b": keep-alive\n\n"  # the model is silent: proxies must not time the stream out
            continue
        data = prefix + json.dumps(text).encode() + suffix
        record.bytes += len(data)
        yield data
    ended = "cut_short" if record.ended == CUT_SHORT else "complete"
    if ended == "cut_short":
        yield prefix + json.dumps(cut_short_notice(record.cut_reason)).encode() + suffix
    yield _event({"type": "text-end", "id": TEXT_ID})
    yield _event({"type": "finish", "messageMetadata": {
        **metadata(reply), "ended": ended, "reason": record.reason or record.cut_reason or None}})
    yield b"data: [DONE]\n\n"


def _event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
