"""Stream records: each reply's body as its client received it, to read again from any byte, and to stop.

A record holds the reply's headers, its body bytes as they were produced, and
how it ended (``complete``, ``cut_short``, ``stopped``). A reader asks for the
body from a byte offset and then follows it live until it ends. While a reply
streams, the process producing it is told about stops through ``producers``.

``MemoryStreams`` keeps records in this process: a single-worker deploy can
resume every reply, a multi-worker one only the replies of the worker a resume
reaches (``/healthz`` says so). ``redis_streams.RedisStreams`` implements the
same methods for several workers and instances (``REDIS_URL``).
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

STREAMING, COMPLETE, CUT_SHORT, STOPPED = "streaming", "complete", "cut_short", "stopped"
FOLLOW_WAKE = 1.0  # seconds a reader waits for more before it looks again (at the heartbeat, at a stop)
#: Bytes of finished replies a process keeps at most; past it the oldest go before their ttl. At 300
#: replies a second of 2 KB, a 600 s ttl would otherwise hold 360 MB.
MEMORY_CAP = 32 * 1024 * 1024


class UnknownStream(LookupError):
    """No record with that id: never made, or expired."""


class BadOffset(ValueError):
    """The offset is beyond the reply's end, or inside a UTF-8 character."""


@dataclass
class StreamInfo:
    state: str
    bytes: int
    headers: dict[str, str]
    cut_reason: str = ""


@dataclass
class _Record:
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)
    state: str = STREAMING
    cut_reason: str = ""
    readers: int = 0
    last_read: float = 0.0  # monotonic time a reader last looked
    expires: float | None = None  # monotonic time, once it ended


class MemoryStreams:
    """Stream records in this process's memory, expiring ``ttl`` seconds after their reply ends."""

    shared = False

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic, cap: int = MEMORY_CAP):
        self.ttl = ttl
        self.clock = clock
        self.cap = cap
        self._kept = 0  # bytes of the finished records kept
        self._records: dict[str, _Record] = {}
        self._expiry: list[tuple[float, str]] = []
        self._changed = threading.Condition()  # a gevent condition under monkey-patching
        self._waiting = 0  # readers waiting on it: with none, appending notifies nobody
        #: stream id -> what stops its reply, for the replies this process produces
        self.producers: dict[str, Callable[[], None]] = {}

    # -- the producing side ---------------------------------------------------------------------

    def start(self, stream_id: str, headers: dict[str, str]) -> None:
        self._expire()
        self._records[stream_id] = _Record(headers=dict(headers))

    def append(self, stream_id: str, data: bytes) -> None:
        record = self._records.get(stream_id)
        if record is not None and data:
            record.body += data
            if self._waiting:
                self._notify()

    def finish(self, stream_id: str, state: str, cut_reason: str = "") -> None:
        record = self._records.get(stream_id)
        if record is None or record.state != STREAMING:
            return
        record.state, record.cut_reason = state, cut_reason
        record.expires = self.clock() + self.ttl
        heapq.heappush(self._expiry, (record.expires, stream_id))
        self._kept += len(record.body)
        self.producers.pop(stream_id, None)
        self._notify()
        while self._kept > self.cap and self._expiry:
            self._drop(*heapq.heappop(self._expiry))

    def has_reader(self, stream_id: str, within: float) -> bool:
        """Whether a reader is attached, or looked within the last ``within`` seconds."""
        record = self._records.get(stream_id)
        return record is not None and (record.readers > 0 or self.clock() - record.last_read < within)

    # -- the reading side -----------------------------------------------------------------------

    def info(self, stream_id: str) -> StreamInfo:
        record = self._record(stream_id)
        return StreamInfo(record.state, len(record.body), dict(record.headers), record.cut_reason)

    def check_offset(self, stream_id: str, offset: int, wait: float) -> None:
        """Raise ``BadOffset`` unless ``offset`` starts a character of the body, waiting up to ``wait`` s for it."""
        record = self._record(stream_id)
        deadline = self.clock() + wait
        with self._changed:
            while len(record.body) < offset and record.state == STREAMING and self.clock() < deadline:
                self._wait(min(FOLLOW_WAKE, max(0.0, deadline - self.clock())))
        if offset > len(record.body):
            raise BadOffset(f"offset {offset} is beyond the {len(record.body)} bytes of the reply")
        if offset < len(record.body) and 0x80 <= record.body[offset] < 0xC0:
            raise BadOffset(f"offset {offset} is inside a UTF-8 character")

    def read(self, stream_id: str, offset: int) -> Iterator[bytes]:
        """Yield the body from ``offset``, then what is added, until the reply ends."""
        record = self._record(stream_id)
        record.readers += 1
        try:
            position = offset
            while True:
                record.last_read = self.clock()
                if len(record.body) > position:
                    chunk = bytes(record.body[position:])
                    position += len(chunk)
                    yield chunk
                    continue
                if record.state != STREAMING:
                    return
                with self._changed:
                    if len(record.body) == position and record.state == STREAMING:
                        self._wait(FOLLOW_WAKE)
        finally:
            record.readers -= 1
            record.last_read = self.clock()

    def stop(self, stream_id: str) -> str:
        """Ask the reply to stop; return its state before (``UnknownStream`` if there is no such record)."""
        record = self._record(stream_id)
        if record.state == STREAMING:
            stop = self.producers.get(stream_id)
            if stop is not None:
                stop()
        return record.state

    def health(self) -> dict:
        return {"store": "memory", "healthy": True, "records": len(self._records), "bytes_kept": self._kept}

    # -- internals ------------------------------------------------------------------------------

    def _record(self, stream_id: str) -> _Record:
        self._expire()
        record = self._records.get(stream_id)
        if record is None:
            raise UnknownStream(stream_id)
        return record

    def _wait(self, seconds: float) -> None:
        # Called holding self._changed.
        self._waiting += 1
        try:
            self._changed.wait(seconds)
        finally:
            self._waiting -= 1

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _expire(self) -> None:
        now = self.clock()
        while self._expiry and self._expiry[0][0] <= now:
            self._drop(*heapq.heappop(self._expiry))

    def _drop(self, at: float, stream_id: str) -> None:
        record = self._records.get(stream_id)
        if record is not None and record.expires == at:
            del self._records[stream_id]
            self._kept -= len(record.body)
