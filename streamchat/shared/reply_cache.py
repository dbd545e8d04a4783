"""The reply cache: answers kept as stream records, found by the question's key.

An answer is a stream record (``streams.StreamRecords``) of a live reply's text as
UTF-8, with the provider and model as its headers and, as its trailer, the
upstream's usage and the length of each piece (so that a hit streams the
original's pieces; a follower gets the text as it comes). The cache maps a question's key
(``domain.cache_key``) to the answer being written for it or written already, so
one mechanism gives both:

- an answer that ended ``complete`` is a **hit**: its text, at once;
- an answer still streaming is **joined**: followed from its first piece, live;
- a key claimed by a request still waiting for its model's first text is
  **pending**: the asker looks again shortly;
- anything else (no answer, an answer cut short or stopped, a dead producer, a
  claim older than a first text can take) is a **miss**, and the asker's claim
  replaces it: its own answer is the one others find from now.

``MemoryReplyCache`` keeps answers in the worker's memory (bounded, oldest out
first); ``RedisReplyCache`` in the ``REDIS_URL`` Redis, shared by every worker of
every instance, looking up and claiming in one script call. With Redis away a
look finds nothing and claims nothing (``off``): no cache, no error.

Followers in the process that writes an answer read it from that process's
memory (``LocalFirst``), and wait for a claim made there without looking again
(``wait_for_claim``): a crowd on one worker costs no Redis round trip a piece.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .memory_streams import MemoryStreams
from .outage import Outage
from .redis import redis_errors
from .redis_streams import DEAD_AFTER, RedisStreams
from .streams import COMPLETE, STREAMING, StreamRecords, UnknownStream

log = logging.getLogger("streamchat")

HIT, JOINED, PENDING, MISS, OFF = "hit", "joined", "pending", "miss", "off"
KEY_PREFIX = "streamchat:reply-cache:"  # the key of a question -> "<answer id> <claimed at>"
ANSWER_PREFIX = "streamchat:answer:"
#: Bytes of finished answers a worker keeps in memory at most; past it the oldest go first.
MEMORY_CAP = 16 * 1024 * 1024
MEMORY_KEYS = 20_000
#: A file whose change, on this machine, empties every worker's in-memory cache (``./run cache clear``).
CLEARED_MARK = os.path.join(tempfile.gettempdir(), "streamchat-reply-cache-cleared")


@dataclass
class Found:
    """What a look for a question's answer found."""

    kind: str  # hit, joined, pending, miss (the asker's claim is in), off (no cache now)
    answer_id: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    trailer: str = ""  # of a hit: the original's usage (JSON)
    body: bytes = b""  # of a hit: the whole answer, as recorded


def pieces_of(body: bytes, lengths: list[int]) -> Iterator[str]:
    """Yield the pieces of a complete answer's ``body``, ``lengths`` bytes each (the rest, if any, last)."""
    position = 0
    for length in lengths:
        yield body[position:position + length].decode()
        position += length
    if position < len(body):
        yield body[position:].decode()


def text_of(chunks: Iterator[bytes]) -> Iterator[str]:
    """Yield the text of an answer's bytes as they come, whatever splits them."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    for chunk in chunks:
        text = decoder.decode(chunk)
        if text:
            yield text


class ReplyCache(ABC):
    """Where answers are kept, found and claimed."""

    shared = False

    def __init__(self, answers: StreamRecords, ttl: float):
        self.answers = answers  # the records of the answers' text
        self.ttl = ttl
        self._claims: dict[str, threading.Event] = {}  # answer id -> set once it started or its claim went

    def claimed(self, answer_id: str) -> None:
        """Note a claim made in this process, for ``wait_for_claim``."""
        self._claims[answer_id] = threading.Event()

    def claim_resolved(self, answer_id: str) -> None:
        """Say that the claim's answer started, or that the claim went: whoever waits here looks again."""
        event = self._claims.pop(answer_id, None)
        if event is not None:
            event.set()

    def wait_for_claim(self, answer_id: str, timeout: float) -> bool:
        """Wait for a claim made in this process to resolve; False at once for another process's claim."""
        event = self._claims.get(answer_id)
        return event is not None and event.wait(timeout)

    @abstractmethod
    def look(self, key: str, claim_id: str, *, fresh: bool, pending_for: float) -> Found:
        """Find the answer to ``key``, else claim the key for ``claim_id``.

        ``fresh``: never find, always claim. A claim with no answer started yet is ``pending`` while
        younger than ``pending_for`` seconds (the longest wait for a first text).
        """

    @abstractmethod
    def release(self, key: str, claim_id: str) -> None:
        """Give up the claim of ``claim_id`` on ``key`` (no live answer will come from it)."""

    @abstractmethod
    def clear(self) -> int:
        """Forget every answer; return how many keys went (-1: unknown)."""

    @abstractmethod
    def health(self) -> dict:
        """Return what ``/healthz`` shows of the cache."""


class MemoryReplyCache(ReplyCache):
    """Answers in this worker's memory, at most ``MEMORY_CAP`` bytes of them, the oldest out first."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic, cap: int = MEMORY_CAP,
                 cleared_mark: str = CLEARED_MARK):
        super().__init__(MemoryStreams(ttl, clock=clock, cap=cap), ttl)
        self.clock = clock
        self.cleared_mark = cleared_mark
        self._keys: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._mark = self._mark_time()
        self._next_mark_look = 0.0

    def look(self, key: str, claim_id: str, *, fresh: bool, pending_for: float) -> Found:
        self._forget_if_cleared()
        now = self.clock()
        claimed = self._keys.get(key)
        if claimed is not None and not fresh:
            answer_id, at = claimed
            try:
                info = self.answers.info(answer_id)
            except UnknownStream:
                if now - at < pending_for:
                    return Found(PENDING, answer_id)
            else:
                if info.state == COMPLETE:
                    body = b"".join(self.answers.read(answer_id, 0))
                    return Found(HIT, answer_id, info.headers, info.trailer, body)
                if info.state == STREAMING:
                    return Found(JOINED, answer_id, info.headers)
        self._keys[key] = (claim_id, now)
        self._keys.move_to_end(key)
        while len(self._keys) > MEMORY_KEYS:
            self._keys.popitem(last=False)
        return Found(MISS, claim_id)

    def release(self, key: str, claim_id: str) -> None:
        self.claim_resolved(claim_id)
        claimed = self._keys.get(key)
        if claimed is not None and claimed[0] == claim_id:
            del self._keys[key]

    def clear(self) -> int:
        """Empty this machine's in-memory caches: every worker forgets its answers within a second."""
        with open(self.cleared_mark, "a"):
            os.utime(self.cleared_mark)
        count = len(self._keys)
        self._keys.clear()
        return -1 if count == 0 else count

    def health(self) -> dict:
        return {"store": "memory", "ttl": self.ttl, "keys": len(self._keys)}

    def _mark_time(self) -> float:
        try:
            return os.stat(self.cleared_mark).st_mtime
        except OSError:
            return 0.0

    def _forget_if_cleared(self) -> None:
        now = time.monotonic()
        if now < self._next_mark_look:
            return
        self._next_mark_look = now + 1.0
        mark = self._mark_time()
        if mark != self._mark:
            self._mark = mark
            self._keys.clear()


#: Seconds an answer written here stays in this process's memory after it ended, for its followers here
#: (later askers find it in Redis), and the bytes of them kept at most.
LOCAL_TTL = 30.0
LOCAL_CAP = 4 * 1024 * 1024


class LocalFirst(StreamRecords):
    """Answers in ``shared`` (Redis), and those written in this process also in ``local`` memory: a reader
    here follows those from memory, woken as each piece comes, with no round trip."""

    shared = True

    def __init__(self, shared: StreamRecords, local: MemoryStreams):
        self.shared_store = shared
        self.local = local

    def start(self, stream_id, headers, stop, name="") -> None:
        self.shared_store.start(stream_id, headers, stop)  # RecordsUnavailable: neither
        self.local.start(stream_id, headers, stop)

    def append(self, stream_id, data) -> None:
        self.shared_store.append(stream_id, data)
        self.local.append(stream_id, data)

    def finish(self, stream_id, state, cut_reason="", trailer="") -> None:
        self.shared_store.finish(stream_id, state, cut_reason, trailer)
        self.local.finish(stream_id, state, cut_reason, trailer)

    def has_reader(self, stream_id, within) -> bool:
        return self.local.has_reader(stream_id, within) or self.shared_store.has_reader(stream_id, within)

    def flush(self) -> None:
        self.shared_store.flush()

    def _store(self, stream_id: str) -> StreamRecords:
        try:
            self.local.info(stream_id)
        except UnknownStream:
            return self.shared_store
        return self.local

    def info(self, stream_id):
        return self._store(stream_id).info(stream_id)

    def check_offset(self, stream_id, offset, wait) -> None:
        self._store(stream_id).check_offset(stream_id, offset, wait)

    def read(self, stream_id, offset):
        return self._store(stream_id).read(stream_id, offset)

    def stop(self, stream_id) -> str:
        return self._store(stream_id).stop(stream_id)

    def health(self) -> dict:
        return self.shared_store.health()


# The look as a Lua function, so that a chat request's counting script can run it in the same call
# (``web.guards.failsoft.COUNT_AND_LOOK``). KEYS: the question's key. ARGV: the claim ("<id> <now>"), now,
# pending_for, the answers' prefix, the claim's ttl in ms, fresh ("1": never find), the seconds after which a
# silent producer is dead.
LOOK_FUNCTION = """
local function look(KEYS, ARGV)
    local claim = redis.call("get", KEYS[1])
    local now = tonumber(ARGV[2])
    if claim and ARGV[6] ~= "1" then
        local id, at = string.match(claim, "^(%S+) (%S+)$")
        if id then
            local meta = ARGV[4] .. id .. ":meta"
            local m = redis.call("hmget", meta, "state", "hb", "headers", "trailer")
            if m[1] == "complete" then
                local parts = {}
                for _, entry in ipairs(redis.call("xrange", ARGV[4] .. id, "-", "+")) do
                    local fields = entry[2]
                    for i = 1, #fields, 2 do
                        if fields[i] == "d" then parts[#parts + 1] = fields[i + 1] end
                    end
                end
                return {"hit", id, m[3], m[4] or "", table.concat(parts)}
            elseif m[1] == "streaming" and now - tonumber(m[2] or 0) <= tonumber(ARGV[7]) then
                return {"joined", id, m[3]}
            elseif not m[1] and now - tonumber(at) < tonumber(ARGV[3]) then
                return {"pending", id}
            end
        end
    end
    redis.call("set", KEYS[1], ARGV[1], "px", ARGV[5])
    return {"miss"}
end
"""
LOOK = LOOK_FUNCTION + "return look(KEYS, ARGV)\n"

RELEASE = """
local claim = redis.call("get", KEYS[1])
if claim and string.sub(claim, 1, #ARGV[1] + 1) == ARGV[1] .. " " then
    redis.call("del", KEYS[1])
end
return 1
"""


class RedisReplyCache(ReplyCache):
    """Answers in Redis, found and claimed by every worker of every instance in one script call."""

    shared = True

    def __init__(self, client, ttl: float, timeout: float, longest_reply: float):
        # An answer lives as long as a reply may last while it streams, then ``ttl`` once complete.
        shared = RedisStreams(client, ttl, live_ttl=longest_reply + ttl, timeout=timeout, prefix=ANSWER_PREFIX,
                              stops=False)
        super().__init__(LocalFirst(shared, MemoryStreams(LOCAL_TTL, cap=LOCAL_CAP)), ttl)
        self.client = client
        self.claim_ttl_ms = int((longest_reply + ttl) * 1000)
        self.outage = Outage("reply cache (Redis)", "replies are not cached")
        self._look = client.register_script(LOOK)
        self._release = client.register_script(RELEASE)

    def look_call(self, key: str, claim_id: str, *, fresh: bool, pending_for: float) -> tuple[list, list]:
        """Return the keys and arguments of ``LOOK_FUNCTION``'s call for ``look``'s question."""
        now = f"{time.time():.3f}"
        return [KEY_PREFIX + key], [f"{claim_id} {now}", now, pending_for, ANSWER_PREFIX, self.claim_ttl_ms,
                                    int(fresh), DEAD_AFTER]

    def look(self, key: str, claim_id: str, *, fresh: bool, pending_for: float) -> Found:
        if self.outage.down and not self.outage.should_try():
            return Found(OFF)
        keys, args = self.look_call(key, claim_id, fresh=fresh, pending_for=pending_for)
        try:
            found = self._look(keys=keys, args=args)
        except redis_errors() as exc:
            self.outage.failed(exc)
            return Found(OFF)
        self.outage.recovered()
        return self.found(found, claim_id)

    @staticmethod
    def found(found: list, claim_id: str) -> Found:
        """Return what a call of ``LOOK_FUNCTION`` found."""
        # A client without decode_responses (the rate-limit storage's, when the look rides on its call) gives bytes.
        text = [item.decode() if isinstance(item, bytes) else item for item in found[:4]]
        kind = text[0]
        if kind == HIT:
            body = found[4] if isinstance(found[4], bytes) else found[4].encode()
            return Found(HIT, text[1], json.loads(text[2]), text[3], body)
        if kind == JOINED:
            return Found(JOINED, text[1], json.loads(text[2]))
        if kind == PENDING:
            return Found(PENDING, text[1])
        return Found(MISS, claim_id)

    def release(self, key: str, claim_id: str) -> None:
        self.claim_resolved(claim_id)
        try:
            self._release(keys=[KEY_PREFIX + key], args=[claim_id])
        except redis_errors() as exc:
            self.outage.failed(exc)  # the claim expires on its own; askers meanwhile wait for it, then claim

    def clear(self) -> int:
        count = 0
        for pattern in (KEY_PREFIX + "*", ANSWER_PREFIX + "*"):
            batch = []
            for name in self.client.scan_iter(match=pattern, count=500):
                batch.append(name)
                if pattern.startswith(KEY_PREFIX):
                    count += 1
                if len(batch) >= 500:
                    self.client.delete(*batch)
                    batch = []
            if batch:
                self.client.delete(*batch)
        return count

    def health(self) -> dict:
        return {"store": "redis", "ttl": self.ttl, **self.outage.health()}
