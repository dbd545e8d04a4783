"""Stream records in Redis: any worker of any instance reads, follows or stops any reply.

Each reply has two keys, expiring ``RESUME_TTL`` seconds after it ends:

- ``streamchat:stream:<id>``, a Redis Stream of the body's bytes in batches (field ``d``), closed by one
  entry saying how it ended (fields ``end`` and ``reason``);
- ``streamchat:stream:<id>:meta``, a hash: the reply's headers (``headers``, JSON), ``state``, ``trailer``
  (what the producer added at the end), and ``hb`` and ``reader``, the Unix times the producer last beat
  and a reader last looked.

(The reply cache keeps its answers in a store of its own, under ``streamchat:answer:``.)

Writing costs the producing worker no round trip per reply or token: ``start``, ``append`` and
``finish`` only buffer, and one flusher per process creates, fills and ends every record, with every
producer's heartbeat, in one script call every ``FLUSH_EVERY`` seconds (sooner when a reply has
``FLUSH_BYTES`` waiting). A reader finds a reply whose
heartbeat stopped (its instance died) and ends it as cut short. Stops go over pub/sub to every process;
the one producing the reply stops it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator


from .outage import Outage
from .redis import redis_errors
from .streams import (CUT_SHORT, STREAMING, ProducerGone, RecordsUnavailable, StreamInfo, StreamRecords, UnknownStream,
                      check_utf8_offset)

if TYPE_CHECKING:  # the client library is loaded by shared.redis.connect, when REDIS_URL is set
    import redis

log = logging.getLogger("streamchat")

PREFIX = "streamchat:stream:"
STOP_CHANNEL = "streamchat:stop"
FLUSH_EVERY = 0.05  # seconds a batch may wait before it is written
FLUSH_BYTES = 4096  # a batch this large is written at once
HEARTBEAT_EVERY = 1.0
DEAD_AFTER = 5.0  # seconds without a heartbeat after which a reader takes the producer for dead
READER_MARK_EVERY = 0.4  # seconds between a reader's marks that it still reads

# One call per flush. KEYS: stream, meta for each reply; ARGV: now, ttl while streaming, ttl once ended, then
# for each reply its headers (JSON, only in the first batch), data, end state, reason and trailer (only in the last),
# and the key of its name (in the first and the last: it points at the stream as long as the record lives).
FLUSH = """
local now, live_ttl, ttl = ARGV[1], ARGV[2], ARGV[3]
for i = 1, #KEYS / 2 do
    local stream, meta = KEYS[2 * i - 1], KEYS[2 * i]
    local at = 3 + (i - 1) * 6
    local name = ARGV[at + 6]
    local headers, data, ending, reason = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4]
    if headers ~= "" then
        redis.call("hset", meta, "headers", headers, "state", "streaming", "reader", 0)
        if name ~= "" then
            redis.call("set", name, stream, "px", live_ttl)
        end
    end
    if data ~= "" then
        redis.call("xadd", stream, "*", "d", data)
    end
    if ending ~= "" then
        redis.call("xadd", stream, "*", "end", ending, "reason", reason)
        redis.call("hset", meta, "state", ending, "reason", reason, "trailer", ARGV[at + 5], "hb", now)
        redis.call("pexpire", stream, ttl)
        redis.call("pexpire", meta, ttl)
        if name ~= "" and redis.call("get", name) == stream then
            redis.call("pexpire", name, ttl)
        end
    else
        redis.call("hset", meta, "hb", now)
        if headers ~= "" or data ~= "" then
            redis.call("pexpire", stream, live_ttl)
            redis.call("pexpire", meta, live_ttl)
        end
    end
end
return 1
"""


@dataclass
class _Batch:
    headers: str = ""  # JSON, until the record is created
    data: bytearray = field(default_factory=bytearray)
    ending: str = ""  # the end state, once the reply ended
    reason: str = ""
    trailer: str = ""
    name: str = ""  # the key of the record's name, if it has one


def _unavailable_while_redis_is_away(method):
    """Report Redis's errors as the interface's ``RecordsUnavailable``."""

    @functools.wraps(method)
    def guarded(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except redis_errors() as exc:
            raise RecordsUnavailable(str(exc)) from exc

    return guarded


class RedisStreams(StreamRecords):
    """Stream records in Redis, shared by every worker of every instance."""

    shared = True

    def __init__(self, client: redis.Redis, ttl: float, live_ttl: float, timeout: float, *,
                 prefix: str = PREFIX, stops: bool = True):
        self.client = client
        self.prefix = prefix
        self.stops = stops  # whether its replies can be stopped (a listener per process)
        # A blocking read must return before the client's socket timeout (REDIS_TIMEOUT) calls Redis dead.
        self.block_ms = max(10, int(timeout * 1000 * 0.6))
        self.ttl_ms = int(ttl * 1000)
        self.live_ttl_ms = int(live_ttl * 1000)  # while a reply streams: as long as it may last, and the ttl
        self.outage = Outage("stream records (Redis)", "replies stream without a stream id")
        self._producers: dict[str, Callable[[], None]] = {}  # stream id -> what stops its reply, produced here
        self._batches: dict[str, _Batch] = {}  # the replies produced here, what is not written yet of each
        self._lock = threading.Lock()
        self._flush = client.register_script(FLUSH)
        self._pid: int | None = None
        self._last_beat = 0.0

    # -- the producing side ---------------------------------------------------------------------
    # Nothing here waits on Redis: the record is created, filled and ended by the flusher, within
    # FLUSH_EVERY. Measured at 1,000 streams, a round trip to create and one to end each record cost
    # 21% more CPU per upstream chunk than recording off; batched, 5-7% (2026-12-05, two runs in turn).

    def start(self, stream_id: str, headers: dict[str, str], stop: Callable[[], None], name: str = "") -> None:
        self._run_here()
        if self.outage.down:  # the flusher found it so, and will find it back
            raise RecordsUnavailable("Redis is away")
        with self._lock:
            self._batches[stream_id] = _Batch(headers=json.dumps(headers), name=self.prefix + "name:" + name
                                              if name else "")
        self._producers[stream_id] = stop

    def append(self, stream_id: str, data: bytes) -> None:
        batch = self._batches.get(stream_id)
        if batch is None:
            return  # not recorded, or finished
        batch.data += data
        if len(batch.data) >= FLUSH_BYTES:
            self.flush()

    def finish(self, stream_id: str, state: str, cut_reason: str = "", trailer: str = "") -> None:
        self._producers.pop(stream_id, None)
        batch = self._batches.get(stream_id)
        if batch is not None and not batch.ending:
            batch.ending, batch.reason, batch.trailer = state, cut_reason, trailer

    def has_reader(self, stream_id: str, within: float) -> bool:
        try:
            seen = float(self.client.hget(self.prefix + stream_id + ":meta", "reader") or 0)
        except redis_errors():
            return False
        return time.time() - seen < within

    def flush(self) -> None:
        """Write every waiting batch, and this process's heartbeats when due, in one script call."""
        now = time.time()
        beat = now - self._last_beat >= HEARTBEAT_EVERY
        keys, args = [], [now, self.live_ttl_ms, self.ttl_ms]
        with self._lock:
            for stream_id, batch in list(self._batches.items()):
                if not (batch.headers or batch.data or batch.ending or beat):
                    continue
                keys += [self.prefix + stream_id, self.prefix + stream_id + ":meta"]
                args += [batch.headers, bytes(batch.data), batch.ending, batch.reason, batch.trailer,
                         batch.name if batch.headers or batch.ending else ""]
                batch.headers, batch.data = "", bytearray()
                if batch.ending:
                    del self._batches[stream_id]
        if beat:
            self._last_beat = now
        if not keys and not beat:
            return
        try:
            if keys:
                self._flush(keys=keys, args=args)
            else:
                self.client.ping()  # nothing to write: still learn within a second that Redis went away
        except redis_errors() as exc:
            self.outage.failed(exc)  # those batches are lost: readers find the heartbeat stopped
        else:
            self.outage.recovered()

    # -- the reading side -----------------------------------------------------------------------

    @_unavailable_while_redis_is_away
    def info(self, stream_id: str) -> StreamInfo:
        meta = self._meta(stream_id)
        state = meta.get("state", STREAMING)
        if state == STREAMING and time.time() - float(meta.get("hb") or 0) > DEAD_AFTER:
            state = CUT_SHORT
        body = self._body(stream_id)
        return StreamInfo(state, len(body), json.loads(meta["headers"]), meta.get("reason", ""),
                          meta.get("trailer", ""))

    @_unavailable_while_redis_is_away
    def check_offset(self, stream_id: str, offset: int, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            body = self._body(stream_id)
            if len(body) >= offset or time.monotonic() >= deadline:
                break
            if self._meta(stream_id).get("state") != STREAMING:
                break
            time.sleep(FLUSH_EVERY)
        check_utf8_offset(body, offset)

    def read(self, stream_id: str, offset: int) -> Iterator[bytes]:
        try:
            yield from self._read(stream_id, offset)
        except redis_errors() as exc:
            raise RecordsUnavailable(str(exc)) from exc

    def _read(self, stream_id: str, offset: int) -> Iterator[bytes]:
        stream, meta = self.prefix + stream_id, self.prefix + stream_id + ":meta"
        position, last_id, marked = 0, "0-0", 0.0
        while True:
            if time.monotonic() - marked >= READER_MARK_EVERY:  # has_reader asks about the last second or more
                self.client.hset(meta, "reader", time.time())
                marked = time.monotonic()
            found = self.client.xread({stream: last_id}, count=500, block=self.block_ms)
            entries = found[0][1] if found else []
            for entry_id, fields in entries:
                last_id = entry_id
                if "end" in fields:
                    return
                data = fields["d"].encode()
                if position + len(data) > offset:
                    yield data[max(0, offset - position):]
                position += len(data)
            if not entries:
                state = self.client.hmget(meta, "state", "hb")
                if state[0] is None:
                    return  # expired while read
                if state[0] == STREAMING and time.time() - float(state[1] or 0) > DEAD_AFTER:
                    raise ProducerGone(stream_id)

    @_unavailable_while_redis_is_away
    def named(self, name: str) -> str | None:
        stream = self.client.get(self.prefix + "name:" + name)
        return stream[len(self.prefix):] if stream else None

    @_unavailable_while_redis_is_away
    def stop(self, stream_id: str) -> str:
        state = self._meta(stream_id).get("state", STREAMING)
        if state == STREAMING:
            self.client.publish(STOP_CHANNEL, stream_id)
        return state

    def health(self) -> dict:
        return {"store": "redis", "shared": True, **self.outage.health()}

    # -- internals ------------------------------------------------------------------------------

    def _meta(self, stream_id: str) -> dict:
        meta = self.client.hgetall(self.prefix + stream_id + ":meta")
        if not meta:
            # The id may be a few ms old: its record is created by the next flush. Look once more then.
            time.sleep(3 * FLUSH_EVERY)
            meta = self.client.hgetall(self.prefix + stream_id + ":meta")
        if not meta:
            raise UnknownStream(stream_id)
        return meta

    def _body(self, stream_id: str) -> bytes:
        entries = self.client.xrange(self.prefix + stream_id)
        return b"".join(f["d"].encode() for _, f in entries if "d" in f)

    def _run_here(self) -> None:
        # One flusher and one stop listener per process, started in the process that records.
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        threading.Thread(target=self._flush_forever, name="streamchat-flusher", daemon=True).start()
        if self.stops:
            threading.Thread(target=self._listen_for_stops, name="streamchat-stops", daemon=True).start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY)
            try:
                if self.outage.down:
                    self._probe()
                self.flush()
            except Exception:  # never let the flusher die
                log.exception("flushing stream records failed")

    def _probe(self) -> None:
        if self.outage.should_try():
            try:
                self.client.ping()
            except redis_errors():
                return
            self.outage.recovered()

    def _listen_for_stops(self) -> None:
        while True:
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                try:
                    pubsub.subscribe(STOP_CHANNEL)
                    while True:
                        message = pubsub.get_message(timeout=1.0)
                        if message is not None and message["type"] == "message":
                            stop = self._producers.get(message["data"])
                            if stop is not None:
                                stop()
                finally:
                    pubsub.close()
            except redis_errors() as exc:
                self.outage.failed(exc)
            time.sleep(1.0)
