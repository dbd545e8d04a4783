"""Stream records in one process's memory (``StreamRecords``, see ``streams``).

A single-worker deploy can resume every reply; a multi-worker one only the
replies of the worker a resume reaches (``/healthz`` says so). Finished
records expire ``ttl`` seconds after they end, and at most ``MEMORY_CAP`` bytes
of them are kept.
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .streams import FOLLOW_WAKE, STREAMING, StreamInfo, StreamRecords, UnknownStream, check_utf8_offset

#: Bytes of finished replies a process keeps at most; past it the oldest go before their ttl. At 300
#: replies a second of 2 KB, a 600 s ttl would otherwise hold 360 MB.
MEMORY_CAP = 32 * 1024 * 1024


@dataclass
class _Record:
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)
    state: str = STREAMING
    cut_reason: str = ""
    trailer: str = ""
    name: str = ""  # what it can be found by besides its id (``named``)
    readers: int = 0
    last_read: float = 0.0  # monotonic time a reader last looked
    expires: float | None = None  # monotonic time, once it ended
    # Set at the record's next change, for the readers waiting now (gevent's Event when patched). An event
    # per change rather than a condition: a reader takes it before looking at the body, so a change between
    # the look and the wait is never missed, and no lock is taken per piece.
    changed: threading.Event | None = None

    def next_change(self) -> threading.Event:
        if self.changed is None:
            self.changed = threading.Event()
        return self.changed

    def notify(self) -> None:
        changed, self.changed = self.changed, None
        if changed is not None:
            changed.set()


class MemoryStreams(StreamRecords):
    """Stream records in this process's memory, expiring ``ttl`` seconds after their reply ends."""

    shared = False

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic, cap: int = MEMORY_CAP):
        self.ttl = ttl
        self.clock = clock
        self.cap = cap
        self._kept = 0  # bytes of the finished records kept
        self._records: dict[str, _Record] = {}
        self._expiry: list[tuple[float, str]] = []
        self._producers: dict[str, Callable[[], None]] = {}  # stream id -> what stops its reply
        self._names: dict[str, str] = {}  # a record's name -> its stream id, while the record lives

    # -- the producing side ---------------------------------------------------------------------

    def start(self, stream_id: str, headers: dict[str, str], stop: Callable[[], None], name: str = "") -> None:
        self._expire()
        self._records[stream_id] = _Record(headers=dict(headers), name=name)
        self._producers[stream_id] = stop
        if name:
            self._names[name] = stream_id

    def append(self, stream_id: str, data: bytes) -> None:
        record = self._records.get(stream_id)
        if record is not None and data:
            record.body += data
            record.notify()  # one record's readers: a crowd following one reply never wakes for another's

    def finish(self, stream_id: str, state: str, cut_reason: str = "", trailer: str = "") -> None:
        record = self._records.get(stream_id)
        if record is None or record.state != STREAMING:
            return
        record.state, record.cut_reason, record.trailer = state, cut_reason, trailer
        record.expires = self.clock() + self.ttl
        heapq.heappush(self._expiry, (record.expires, stream_id))
        self._kept += len(record.body)
        self._producers.pop(stream_id, None)
        record.notify()
        while self._kept > self.cap and self._expiry:
            self._drop(*heapq.heappop(self._expiry))

    def has_reader(self, stream_id: str, within: float) -> bool:
        record = self._records.get(stream_id)
        return record is not None and (record.readers > 0 or self.clock() - record.last_read < within)

    # -- the reading side -----------------------------------------------------------------------

    def info(self, stream_id: str) -> StreamInfo:
        record = self._record(stream_id)
        return StreamInfo(record.state, len(record.body), dict(record.headers), record.cut_reason, record.trailer)

    def check_offset(self, stream_id: str, offset: int, wait: float) -> None:
        record = self._record(stream_id)
        deadline = self.clock() + wait
        while True:
            change = record.next_change()
            if not (len(record.body) < offset and record.state == STREAMING and self.clock() < deadline):
                break
            change.wait(min(FOLLOW_WAKE, max(0.0, deadline - self.clock())))
        check_utf8_offset(record.body, offset)

    def read(self, stream_id: str, offset: int) -> Iterator[bytes]:
        record = self._record(stream_id)
        record.readers += 1
        try:
            position = offset
            while True:
                record.last_read = self.clock()
                change = record.next_change()
                if len(record.body) > position:
                    chunk = bytes(record.body[position:])
                    position += len(chunk)
                    yield chunk
                    continue
                if record.state != STREAMING:
                    return
                change.wait(FOLLOW_WAKE)
        finally:
            record.readers -= 1
            record.last_read = self.clock()

    def named(self, name: str) -> str | None:
        self._expire()
        stream_id = self._names.get(name)
        if stream_id is not None and stream_id not in self._records:
            del self._names[name]  # its record expired
            return None
        return stream_id

    def stop(self, stream_id: str) -> str:
        record = self._record(stream_id)
        if record.state == STREAMING:
            stop = self._producers.get(stream_id)
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



    def _expire(self) -> None:
        now = self.clock()
        while self._expiry and self._expiry[0][0] <= now:
            self._drop(*heapq.heappop(self._expiry))

    def _drop(self, at: float, stream_id: str) -> None:
        record = self._records.get(stream_id)
        if record is not None and record.expires == at:
            del self._records[stream_id]
            self._kept -= len(record.body)
            if record.name and self._names.get(record.name) == stream_id:
                del self._names[record.name]
