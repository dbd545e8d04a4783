"""The OpenAI chat-completions framers: a reply as OpenAI shapes it, streamed or whole.

``chunks()`` is the streaming framer: ``data: {chat.completion.chunk}`` events,
the role in the first delta, the finish reason and the ``x_terminal`` extension
in the last, the usage chunk when asked, then ``data: [DONE]``; an SSE comment
while the upstream is silent. ``completion()`` is the whole reply as one
``chat.completion`` object.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Iterator

from ...domain.record import CUT_SHORT
from ...domain.relay import Reply
from .text import cut_short_notice

CONTENT_TYPE = "text/event-stream; charset=utf-8"
RULES_MODEL = "rules"  # the model name of replies the rules responder wrote


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(18)


def model_of(reply: Reply) -> str:
    record = reply.record
    return record.model if record.mode == "live" and record.model else RULES_MODEL


def terminal(reply: Reply) -> dict[str, Any]:
    """The ``x_terminal`` extension: who answered, how the reply ended, and whether the reply cache answered
    (``cache``, for a question it keeps)."""
    record = reply.record
    extension = {"mode": record.mode, "reason": record.reason or record.cut_reason or None,
                 "ended": "cut_short" if record.ended == CUT_SHORT else "complete",
                 "usage_estimated": record.tokens_estimated if record.mode == "live" else False}
    if record.cache:
        extension["cache"] = record.cache
    return extension


def usage_of(reply: Reply) -> dict[str, int]:
    """The reply's usage in OpenAI's shape: the upstream's count, else estimated; a rules reply cost nothing."""
    record = reply.record
    if record.mode != "live":
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    reply.count_tokens()
    return {"prompt_tokens": record.input_tokens, "completion_tokens": record.output_tokens,
            "total_tokens": record.input_tokens + record.output_tokens}


def chunks(reply: Reply, completion_id: str, include_usage: bool) -> Iterator[bytes]:
    """Frame ``reply`` as OpenAI's ``text/event-stream`` of ``chat.completion.chunk`` events."""
    record = reply.record
    head = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model_of(reply)}
    # Every text event is this prefix, the delta, this suffix: one json.dumps of the text per event.
    prefix = ("data: " + json.dumps(head)[:-1] + ', "choices": [{"index": 0, "delta": {"content": ').encode()
    suffix = b'}, "finish_reason": null}]}\n\n'
    first = {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    yield _event(first)
    for text in reply.text():
        if not text:
            yield b": keep-alive\n\n"  # the upstream is silent: proxies must not time the stream out
            continue
        data = prefix + json.dumps(text).encode() + suffix
        record.bytes += len(data)
        yield data
    if record.ended == CUT_SHORT:
        yield prefix + json.dumps(cut_short_notice(record.cut_reason)).encode() + suffix
    yield _event({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                  "x_terminal": terminal(reply)})
    if include_usage:
        yield _event({**head, "choices": [], "usage": usage_of(reply)})
    yield b"data: [DONE]\n\n"


def completion(reply: Reply, completion_id: str, texts: Iterator[str] | None = None) -> dict[str, Any]:
    """Read ``reply`` to its end (``texts``: its text, as the caller wraps it) and return one ``chat.completion``."""
    record = reply.record
    text = "".join(reply.text() if texts is None else texts)
    if record.ended == CUT_SHORT:
        text += cut_short_notice(record.cut_reason)
    record.bytes = len(text.encode())
    return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model_of(reply),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": usage_of(reply), "x_terminal": terminal(reply)}


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"
