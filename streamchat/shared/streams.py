"""Stream records: each reply's body as its client received it, to read again from any byte, and to stop.

``StreamRecords`` is the one interface; ``memory_streams.MemoryStreams`` (one
process) and ``redis_streams.RedisStreams`` (every worker of every instance,
``REDIS_URL``) implement it, and nothing outside a store touches its insides.

A record holds the reply's headers, its body bytes as they were produced, and
how it ended (``complete``, ``cut_short``, ``stopped``). The producing side
starts it (handing over what stops the reply), appends each chunk and finishes
it; a reader asks for the body from a byte offset and follows it live until it
ends; anyone may ask a reply to stop, wherever it is produced.

Errors every store speaks:

    UnknownStream       no record with that id (never made, or expired)
    BadOffset           the offset is past the end or inside a UTF-8 character
    ProducerGone        the process producing the reply died mid-reply (read)
    RecordsUnavailable  the store cannot be reached now (Redis away)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterator

STREAMING, COMPLETE, CUT_SHORT, STOPPED = "streaming", "complete", "cut_short", "stopped"
FOLLOW_WAKE = 1.0  # seconds a reader waits for more before it looks again (at the heartbeat, at a stop)


class UnknownStream(LookupError):
    """No record with that id: never made, or expired."""


class BadOffset(ValueError):
    """The offset is beyond the reply's end, or inside a UTF-8 character."""


class ProducerGone(Exception):
    """The process producing the reply stopped beating: it died mid-reply."""


class RecordsUnavailable(Exception):
    """The store cannot be reached now; the chat goes on answering, unrecorded."""


@dataclass
class StreamInfo:
    state: str
    bytes: int
    headers: dict[str, str]
    cut_reason: str = ""
    trailer: str = ""  # what the producer added at the end (the reply cache's usage, JSON)


class StreamRecords(ABC):
    """Where replies are recorded, read again and stopped."""

    #: Whether every worker (and instance) sees the same records.
    shared: bool = False

    # -- the producing side ---------------------------------------------------------------------

    @abstractmethod
    def start(self, stream_id: str, headers: dict[str, str], stop: Callable[[], None], name: str = "") -> None:
        """Start a record; ``stop`` ends the reply when someone asks (``RecordsUnavailable``: no record).

        ``name``: another key it can be found by while it lives (``named``), such as the AI SDK's chat id.
        """

    @abstractmethod
    def append(self, stream_id: str, data: bytes) -> None:
        """Add ``data`` to the body; never waits on the network."""

    @abstractmethod
    def finish(self, stream_id: str, state: str, cut_reason: str = "", trailer: str = "") -> None:
        """End the record as ``state`` (with a ``trailer`` for its readers); from now it expires after the ttl."""

    @abstractmethod
    def has_reader(self, stream_id: str, within: float) -> bool:
        """Whether a reader is attached, or looked within the last ``within`` seconds."""

    def flush(self) -> None:
        """Write whatever waits to be written (before the process exits); nothing, for a store that buffers none."""

    # -- the reading side -----------------------------------------------------------------------

    @abstractmethod
    def info(self, stream_id: str) -> StreamInfo:
        """Return the record's state, size, headers and cut reason."""

    @abstractmethod
    def check_offset(self, stream_id: str, offset: int, wait: float) -> None:
        """Raise ``BadOffset`` unless ``offset`` starts a character of the body, waiting up to ``wait`` s for it."""

    @abstractmethod
    def read(self, stream_id: str, offset: int) -> Iterator[bytes]:
        """Yield the body from ``offset``, then what is added, until the reply ends."""

    def named(self, name: str) -> str | None:
        """Return the stream id of the latest record started with ``name``, while it lives; None if none."""
        return None

    @abstractmethod
    def stop(self, stream_id: str) -> str:
        """Ask the reply to stop wherever it is produced; return its state before."""

    @abstractmethod
    def health(self) -> dict:
        """Return what ``/healthz`` shows of the store."""


def check_utf8_offset(body: bytes | bytearray, offset: int) -> None:
    """Raise ``BadOffset`` unless ``offset`` is within ``body`` and starts a UTF-8 character."""
    if offset > len(body):
        raise BadOffset(f"offset {offset} is beyond the {len(body)} bytes of the reply")
    if offset < len(body) and 0x80 <= body[offset] < 0xC0:
        raise BadOffset(f"offset {offset} is inside a UTF-8 character")
