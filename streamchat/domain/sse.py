"""Incremental Server-Sent Events decoding, per the HTML living standard.

``SSEDecoder.feed(chunk)`` takes bytes exactly as they came off the network
and returns the events completed by them; ``finish()`` flushes what is left
when the stream ends. It handles what real streams do:

- lines end in ``\\n``, ``\\r\\n`` or a lone ``\\r``, and a ``\\r\\n`` pair may be
  cut between two reads;
- a line, or a multi-byte UTF-8 character, may be cut between two reads:
  lines are split as bytes (``\\r`` and ``\\n`` never occur inside a UTF-8
  sequence) and decoded only once complete;
- comments (``: keep-alive``), ``data:`` with or without its one space,
  several ``data`` lines joined by ``\\n``, ``event``/``id`` fields, unknown
  fields (ignored), a byte-order mark at the very start.

Pure: no I/O, no clock, nothing provider-specific.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple


class ServerSentEvent(NamedTuple):
    event: str
    data: str
    id: str | None = None


class SSEDecoder:
    """Turn a byte stream into events, one ``feed()`` per network read."""

    __slots__ = ("_tail", "_skip_lf", "_started", "_event", "_data", "_id")

    def __init__(self) -> None:
        self._tail = b""  # an incomplete line carried to the next read
        self._skip_lf = False  # the last read ended in \r: a leading \n belongs to it
        self._started = False  # the first line, which may begin with a BOM, is not complete yet
        self._event = ""
        self._data: list[bytes] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Return the events that ``chunk`` completes."""
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._tail:
            chunk = self._tail + chunk
        if not self._started:
            if b"\n" not in chunk:
                self._tail = chunk
                return []
            self._started = True
            chunk = chunk.removeprefix(b"\xef\xbb\xbf")  # the BOM may span two reads
        # Split at blank lines first: most events are one "data: ..." line, taken whole.
        blocks = chunk.split(b"\n\n")
        self._tail = blocks.pop()
        events: list[ServerSentEvent] = []
        for block in blocks:
            if block[:6] == b"data: " and b"\n" not in block and not self._data and not self._event:
                events.append(ServerSentEvent("message", block[6:].decode("utf-8", "replace"), self._id))
                continue
            for line in block.split(b"\n"):
                self._line(line, events)
            self._line(b"", events)
        return events

    def finish(self) -> list[ServerSentEvent]:
        """Return the last event of a stream that ended without its blank line."""
        events: list[ServerSentEvent] = []
        tail = self._tail if self._started else self._tail.removeprefix(b"\xef\xbb\xbf")
        self._tail = b""
        for line in tail.split(b"\n") if tail else ():
            self._line(line, events)
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[ServerSentEvent]) -> None:
        if not line:
            if self._data:
                data = b"\n".join(self._data).decode("utf-8", "replace")
                events.append(ServerSentEvent(self._event or "message", data, self._id))
            self._event = ""
            self._data = []
            return
        if line[0] == 0x3A:  # ":" starts a comment
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            self._id = value.decode("utf-8", "replace")
        # "retry" and unknown fields are ignored, as the standard says.


def iter_sse(chunks: Iterable[bytes]) -> Iterator[ServerSentEvent]:
    """Yield every event of a byte stream given as an iterable of reads."""
    decoder = SSEDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.finish()
