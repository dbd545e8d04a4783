"""Resumable replies: every chat reply is recorded under a stream id, to be read again from any byte and stopped.

``RecordedReply.body()`` is the chat response's body. It passes the framed reply to
the client and appends each chunk to the stream record as it goes. How it ends:

- the reply ends: the record ends the same way (``complete``, ``cut_short``,
  ``stopped``) and the reply closes;
- the client leaves mid-reply (a reload, a phone losing signal): with
  ``RESUME_GRACE`` > 0 the rest of the reply is produced in the background and
  recorded, for as long as a reader is attached or came within the grace
  period; then, if nobody came, the upstream is closed (nobody pays for a reply
  no one reads). ``RESUME_GRACE=0`` closes it at once, as before;
- ``POST /api/chat/streams/<id>/stop``: the producing greenlet is interrupted
  wherever it waits (``server.disconnect.interrupter``) and the reply ends as
  ``stopped``, with no notice;
- the worker drains for a restart (``server.drain``) and its time is up: the
  same interruption ends the reply as cut short by the restart, with its notice,
  recorded too (a reader that comes back gets it, and can ask again).

A reply that others follow (the same question asked while it streams: the reply
cache's join) is not its client's alone: a stop ends this client's response at
the next chunk, and the record as ``stopped``, but the reply itself is carried on
for the others (``Reply.close``); a client gone for good hands it over the same way.

A client that leaves is noticed when a write to it fails (the disconnect watch
would end the upstream read at once, so it is not started while resume is on).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Callable, Iterator

from flask import Response, stream_with_context

from ...domain.record import CLIENT_GONE, COMPLETE, CUT_SHORT, OPEN, RESTARTING, STOPPED
from ...domain.relay import Reply
from ...errors import ReplyStopped, ServiceRestarting
from ...server.disconnect import interrupter
from ...server.drain import DRAIN
from ...shared import streams as records
from ...shared.streams import ProducerGone, RecordsUnavailable, StreamRecords
from .response import STREAM_HEADERS, StreamingResponse, reply_headers, reply_response
from .text import CUT_SHORT_NOTICE

log = logging.getLogger("streamchat")

#: A record's end state for a reply's ending; any other ending (a client gone with nobody back) is cut short.
STATE_OF_ENDING = {COMPLETE: records.COMPLETE, STOPPED: records.STOPPED}
GRACE_CHECK = 0.5  # seconds between looks for a reader while a reply goes on with no client


def new_stream_id() -> str:
    """Return a new stream id: 192 random bits, URL-safe; knowing it is what reading or stopping needs."""
    return secrets.token_urlsafe(24)


def recorded_response(reply: Reply, framer: Callable[[Reply], Iterator[bytes]], content_type: str,
                      store: StreamRecords, grace: float, extra: dict[str, str] | None = None,
                      name: str = "") -> Response:
    """Return the response streaming ``reply`` through ``framer``, recorded under a new ``X-Stream-Id``.

    ``extra``: headers of the wire format, recorded too; ``name``: what the record can be found by besides
    its id while it lives (the AI SDK's chat id, for its resume request).
    """
    reply.record.stream_id = stream_id = new_stream_id()
    headers = {**reply_headers(reply), **(extra or {})}
    recorded = RecordedReply(reply, framer(reply), store, stream_id, grace)
    try:
        recorded.start({**headers, "Content-Type": content_type}, name)
    except RecordsUnavailable:  # Redis away: the reply streams as it would unrecorded, without an id (the store logged it)
        reply.record.stream_id = ""
        return reply_response(reply, framer, content_type, extra)
    # No call_on_close(reply.close) here: the body closes the reply, now or once its continuation ends.
    return StreamingResponse(stream_with_context(recorded.body()), content_type=content_type,
                             headers={**STREAM_HEADERS, **headers, "X-Stream-Id": stream_id})


def replay_response(store: StreamRecords, stream_id: str, offset: int) -> Response:
    """Return the response reading the record ``stream_id`` from byte ``offset``, live until it ends."""
    info = store.info(stream_id)
    store.check_offset(stream_id, offset, wait=records.FOLLOW_WAKE * 5)
    headers = {key: value for key, value in info.headers.items() if key != "Content-Type"}
    return StreamingResponse(_replayed(store, stream_id, offset), content_type=info.headers.get("Content-Type"),
                             headers={**STREAM_HEADERS, **headers, "X-Stream-Id": stream_id})


def _replayed(store: StreamRecords, stream_id: str, offset: int) -> Iterator[bytes]:
    try:
        yield from store.read(stream_id, offset)
    except ProducerGone:  # its instance died mid-reply: end as a reply cut short
        yield CUT_SHORT_NOTICE.encode()
    except RecordsUnavailable as exc:  # Redis went away while we read
        log.warning("reading stream %s stopped: %s", stream_id[:8], exc)
        yield CUT_SHORT_NOTICE.encode()


class RecordedReply:
    """One reply being recorded: its body for the client, its continuation when the client leaves, its stop."""

    def __init__(self, reply: Reply, framed: Iterator[bytes], store: StreamRecords, stream_id: str, grace: float):
        self.reply = reply
        self.framed = framed
        self.store = store
        self.stream_id = stream_id
        self.grace = grace
        self.finished = False
        self.stopping = False
        self.restarting = False
        self._interrupt: Callable | None = None  # see server.disconnect.interrupter
        self._appending = False  # a record write may wait on Redis: not where a restart may land
        self._drain_key: int | None = None

    def start(self, headers: dict[str, str], name: str = "") -> None:
        """Start the record (``RecordsUnavailable``: not recorded), and let a stop or a restart end the reply."""
        self.store.start(self.stream_id, headers, self.stop, name)
        self._drain_key = DRAIN.register(self.restart)

    def body(self) -> Iterator[bytes]:
        """The response's body; closing it early (the client left) hands the rest to ``_go_on``."""
        self._interrupt = interrupter()
        try:
            for chunk in self.framed:
                self._append(chunk)
                yield chunk
                if self.stopping:
                    raise ReplyStopped()
            self.finished = True
        except ReplyStopped:  # seen between two chunks: _end records it as stopped
            pass
        finally:
            self._interrupt = None  # this greenlet goes back to the server now: never interrupt it there
            if self.finished or self.grace <= 0 or self.stopping or self.restarting:
                self._end()
            else:
                threading.Thread(target=self._go_on, name=f"reply-{self.stream_id[:8]}", daemon=True).start()

    def _go_on(self) -> None:
        """Produce and record the rest of the reply with no client, while someone may still read it."""
        self._interrupt = interrupter()
        grace_ends = time.monotonic() + self.grace
        next_look = time.monotonic() + GRACE_CHECK
        try:
            for chunk in self.framed:
                self._append(chunk)
                if self.stopping:
                    raise ReplyStopped()
                now = time.monotonic()
                if now >= next_look:
                    next_look = now + GRACE_CHECK
                    if self.store.has_reader(self.stream_id, within=GRACE_CHECK * 2):
                        grace_ends = now + self.grace
                    elif now >= grace_ends:
                        if not self._followed():  # else closing the reply carries it on for those who follow it
                            log.info("nobody came back for stream %s within %g s: closing its upstream",
                                     self.stream_id[:8], self.grace)
                            self.reply.record.ended = CLIENT_GONE
                        return
            self.finished = True
        except ReplyStopped:  # _end records it as stopped
            pass
        except Exception:
            log.exception("reply %s failed while no client was attached", self.stream_id[:8])
        finally:
            self._end()

    def _append(self, chunk: bytes) -> None:
        self._appending = True
        try:
            self.store.append(self.stream_id, chunk)
        finally:
            self._appending = False

    def stop(self) -> None:
        """End the reply now, from any greenlet: it is recorded as ``stopped``."""
        self.stopping = True
        if self._followed():
            return  # seen between two chunks: interrupted where it waits, the upstream would close for all
        interrupt = self._interrupt
        if interrupt is not None:
            interrupt(ReplyStopped(), lambda: self._interrupt is interrupt)

    def restart(self, error: ServiceRestarting) -> None:
        """End the reply for a restart, from the drain: cut short, with its notice where it can still be written."""
        self.restarting = True
        interrupt = self._interrupt
        if interrupt is not None:  # else between its client and its continuation: the drain tries again
            # Once the reply has ended (its notice on the way) it is left alone: a second throw would cut the notice.
            interrupt(error, lambda: self._interrupt is interrupt and not self._appending
                      and self.reply.record.ended == OPEN)

    def _followed(self) -> bool:
        tap = self.reply.tap
        return tap is not None and self.reply.record.ended == OPEN and tap.followed()

    def _end(self) -> None:
        self._interrupt = None
        DRAIN.unregister(self._drain_key)
        record = self.reply.record
        if self.stopping and record.ended == OPEN and not self._followed():
            record.ended = STOPPED  # stopped between two chunks, or while the client's write waited
        elif self.restarting and record.ended == OPEN:
            record.ended, record.cut_reason = CUT_SHORT, RESTARTING  # while the client's write waited
        try:
            close = getattr(self.framed, "close", None)
            if close is not None:
                close()
        finally:
            self.reply.close()  # the upstream, the listeners (or carried on, for those who follow it)
            record = self.reply.record
            state = records.STOPPED if self.stopping else STATE_OF_ENDING.get(record.ended, records.CUT_SHORT)
            self.store.finish(self.stream_id, state, record.cut_reason)
