"""The response a framed reply travels in: streamed (``reply_response``) or whole (``whole_response``).

A framer (``text``, ``openai_sse``) is a generator over a ``Reply``: it writes
each piece of text in its wire format, counts the bytes in
``reply.record.bytes``, and ends the body as the reply ended. This module puts
a framer's bytes in a response, with the headers that say who answered.

While a body streams, the worker's drain (``server.drain``) can end it: the
error is thrown where the body's greenlet waits, and the reply ends as cut
short by a restart, with its notice, like any other ending.
"""

from __future__ import annotations

from typing import Callable, Iterator

from flask import Response, stream_with_context

from ...domain.record import OPEN, ReplyRecord
from ...domain.relay import Reply
from ...server.disconnect import interrupter
from ...server.drain import DRAIN

STREAM_HEADERS = {
    "Cache-Control": "no-store",
    # nginx and other proxies must pass each chunk on at once, and never compress it.
    "X-Accel-Buffering": "no",
    "Content-Encoding": "identity",
}


def reply_headers(reply: Reply) -> dict[str, str]:
    """Return the ``X-Terminal-*`` headers that say who answered the reply, and why in fallback."""
    record = reply.record
    headers = {"X-Terminal-Mode": record.mode, "X-Terminal-Provider": record.provider}
    if record.model:
        headers["X-Terminal-Model"] = record.model
    if record.mode == "fallback":
        headers["X-Terminal-Reason"] = record.reason
    if record.cache:
        headers["X-Terminal-Cache"] = record.cache
    if record.tokens.remaining is not None:
        headers["X-Token-Budget-Remaining"] = str(record.tokens.remaining)
    return headers


def reply_response(reply: Reply, framer: Callable[[Reply], Iterator[bytes]], content_type: str,
                   extra: dict[str, str] | None = None) -> Response:
    """Return the response streaming ``reply`` through ``framer`` (with the wire format's ``extra`` headers);
    closing it closes the reply."""
    response = StreamingResponse(stream_with_context(drainable(framer(reply), reply.record)), content_type=content_type,
                                 headers={**STREAM_HEADERS, **reply_headers(reply), **(extra or {})})
    response.call_on_close(reply.close)
    return response


def whole_response(reply: Reply, render: Callable[[Reply, Iterator[str]], bytes], content_type: str) -> Response:
    """Return the response holding all of ``reply``, as ``render`` writes it from the reply and its text."""
    try:
        # Read here, in the request: a restart's drain must be able to end it as it ends a stream.
        body = render(reply, drainable(reply.text(), reply.record))
    finally:
        reply.close()
    return Response(body, content_type=content_type, headers=reply_headers(reply))


def drainable(body: Iterator, record: ReplyRecord) -> Iterator:
    """Pass ``body`` on, letting the worker's drain end its reply wherever its greenlet waits."""
    interrupt = interrupter()
    if interrupt is None:  # not under gevent: nothing drains
        yield from body
        return
    streaming = [True]
    # Once the reply has ended (its notice on the way) it is left alone: a second throw would cut the notice.
    key = DRAIN.register(lambda error: interrupt(error, lambda: streaming[0] and record.ended == OPEN))
    try:
        yield from body
    finally:
        streaming[0] = False
        DRAIN.unregister(key)


class StreamingResponse(Response):
    """A response whose body generator the WSGI server iterates itself, with nothing in between.

    werkzeug hands a server the body through ``ClosingIterator`` and a generator that
    encodes ``str`` items: for a body that is bytes already, two more Python layers per
    chunk, and two more C frames in the stack gevent saves for every open stream
    (5,720 -> 4,632 bytes a stream, measured). ``direct_passthrough`` makes werkzeug
    give the body itself, but then nothing would call the response's ``close()``, which
    closes the body and runs the ``call_on_close`` callbacks (the reply's close): the
    server gets the body for ``iter()`` and the response's ``close()`` for closing.
    The body must yield bytes: nothing encodes ``str`` items on the way any more.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, direct_passthrough=True, **kwargs)

    def get_app_iter(self, environ):
        app_iter = super().get_app_iter(environ)
        if app_iter is self.response:  # the body itself: there is one to send (not HEAD, 204, 304)
            return _UnwrappedBody(iter(app_iter), self.close)
        return app_iter  # werkzeug's empty body, which closes the response


class _UnwrappedBody:
    """A WSGI iterable: ``__iter__`` returns the body's own iterator; ``close`` is the response's."""

    __slots__ = ("_iterator", "close")

    def __init__(self, iterator, close):
        self._iterator = iterator
        self.close = close

    def __iter__(self):
        return self._iterator
