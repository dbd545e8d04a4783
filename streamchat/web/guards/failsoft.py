"""Shared counts that never fail a request: Redis while it answers, this worker's memory while it does not.

flask-limiter has its own in-memory fallback, but it logs a traceback for every
request that was counting when Redis went away, and once Redis answers again a
worker keeps counting in memory until a later request happens to re-check, so
``/healthz`` could say "healthy" while counts were still per worker.

``FailSoftStorage`` wraps the shared storage instead, so flask-limiter (and the
live budget, which counts through it) only ever sees a storage that answers:

- a call that fails is answered from ``ExpiringCounters`` in this worker, and
  ``Outage`` logs one warning when the outage starts and one when it ends;
- while the outage lasts, at most one call a second tries Redis again (the
  others go straight to memory, so a Redis that hangs costs one request its
  socket timeout each second, not every request);
- ``check()`` (what ``/healthz`` asks) tries Redis when a retry is due and then
  reports what this worker is really doing.

Counts made in memory during an outage are not copied to Redis when it returns:
for that window a client may get up to one more limit's worth per worker.

Round trips: after each hit flask-limiter reads the window back twice to write
its headers (the count and the expiry, each twice: four more round trips to
Redis, 280 µs of worker CPU each under load). ``incr`` on Redis returns the
count and the expiry in one script, and later reads of that key by the same
request answer from it: one round trip per limit instead of five. "The same
request" is the same context (under gevent the greenlet of the request's
connection, which serves its requests one after another, each hitting before
it reads; a thread's otherwise), not a time: a chat request writes its headers
only once the model has answered, seconds after its hit when the worker is busy. (A concurrent hit
by the same client may make ``X-RateLimit-Remaining`` one too high; what is
enforced is the count ``incr`` returned.)
"""

from __future__ import annotations

import contextvars
import time

from limits.storage import SCHEMES, RedisClusterStorage, Storage, storage_from_string

from ...shared.outage import Outage
from ...shared.reply_cache import LOOK_FUNCTION
from .counters import ExpiringCounters, count_in_turn

PREFIX = "streamchat-failsoft+"
_COUNTED_MAX = 16  # keys one context remembers: a request counts two or three

# limits' own incr_expire.lua, also returning the key's remaining time to live in milliseconds.
INCR_WITH_EXPIRY = """
local amount = tonumber(ARGV[2])
local current = redis.call("incrby", KEYS[1], amount)
if tonumber(current) == amount then
    redis.call("expire", KEYS[1], ARGV[1])
end
return {current, redis.call("pttl", KEYS[1])}
"""

# The chat's counts in one call (chat_counts): the rate limits in order until one is past its amount,
# then (if none) the budgets. ARGV: the number of limits, then an expiry and an amount per key. Returns the
# counts, and whether a limit was breached.
COUNT_FUNCTION = """
local function count_together(KEYS, ARGV)
    local limits = tonumber(ARGV[1])
    local counted = {}
    for i, key in ipairs(KEYS) do
        local current = redis.call("incrby", key, 1)
        if current == 1 then
            redis.call("expire", key, ARGV[2 * i])
        end
        counted[#counted + 1] = current
        counted[#counted + 1] = redis.call("pttl", key)
        if i <= limits and current > tonumber(ARGV[2 * i + 1]) then
            return counted, true
        end
    end
    return counted, false
end
"""
COUNT_TOGETHER = COUNT_FUNCTION + "return (count_together(KEYS, ARGV))\n"
# The counts, then (unless a limit was breached) the reply cache's look for the question, in the same call:
# the chat's one round trip (``shared.reply_cache.LOOK_FUNCTION``). ARGV[1], ARGV[2]: how many keys and
# arguments are the counts'; the rest are the look's.
COUNT_AND_LOOK = COUNT_FUNCTION + LOOK_FUNCTION + """
local keys, args = tonumber(ARGV[1]), tonumber(ARGV[2])
local count_keys, count_args, look_keys, look_args = {}, {}, {}, {}
for i = 1, #KEYS do
    if i <= keys then count_keys[#count_keys + 1] = KEYS[i] else look_keys[#look_keys + 1] = KEYS[i] end
end
for i = 3, #ARGV do
    if i <= args + 2 then count_args[#count_args + 1] = ARGV[i] else look_args[#look_args + 1] = ARGV[i] end
end
local counted, breached = count_together(count_keys, count_args)
if breached then
    return {counted}
end
return {counted, look(look_keys, look_args)}
"""



class FailSoftStorage(Storage):
    """A ``limits`` storage that answers from Redis (or any shared storage), or from memory while it is down."""

    # Registered for every shared scheme limits knows, as "streamchat-failsoft+redis://..." and so on.
    STORAGE_SCHEME = [PREFIX + scheme for scheme in SCHEMES if not scheme.startswith(("memory", "async+"))]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options):
        shared_uri = uri[len(PREFIX):]
        self.shared = storage_from_string(shared_uri, **options)
        self.memory = ExpiringCounters()
        self.outage = Outage("rate-limit storage", "this worker counts in its own memory")
        # key -> (count, expires at): what this request's incr of a key returned, for its own reads.
        self._counted: contextvars.ContextVar[dict[str, tuple[int, float]] | None] = \
            contextvars.ContextVar("counted", default=None)
        # Redis only: limits' RedisStorage gives its client as ``storage`` and its key naming as ``prefixed_key``.
        client = getattr(self.shared, "storage", None)
        self._incr_with_expiry = (client.register_script(INCR_WITH_EXPIRY)
                                  if client is not None and hasattr(self.shared, "prefixed_key") else None)
        # One script over several keys: not on a Redis Cluster, whose keys may live on different nodes.
        self._count_together = (client.register_script(COUNT_TOGETHER) if self._incr_with_expiry is not None
                                and not isinstance(self.shared, RedisClusterStorage) else None)
        self._count_and_look = client.register_script(COUNT_AND_LOOK) if self._count_together else None
        self.no_script: type[Exception] | tuple = ()  # Redis's "no such script", once its library is loaded
        if self._incr_with_expiry is not None:
            from redis.exceptions import NoScriptError

            self.no_script = NoScriptError
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self):
        return ()  # nothing escapes: every failure of the shared storage is answered from memory

    def _either(self, method: str, *args):
        if self.outage.should_try():
            try:
                result = getattr(self.shared, method)(*args)
            except (self.shared.base_exceptions, OSError) as exc:
                self.outage.failed(exc)
            else:
                self.outage.recovered()
                return result
        return getattr(self.memory, method)(*args)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        if self._incr_with_expiry is None or self.outage.down:
            return self._either("incr", key, expiry, amount)
        try:
            count, ttl_ms = self._incr_with_expiry([self.shared.prefixed_key(key)], [expiry, amount])
        except (self.shared.base_exceptions, OSError) as exc:
            self.outage.failed(exc)
            return self.memory.incr(key, expiry, amount)
        counted = self._counted.get()
        if counted is None or len(counted) >= _COUNTED_MAX:
            counted = {}
            self._counted.set(counted)
        counted[key] = (int(count), time.time() + max(ttl_ms, 0) / 1000)
        return int(count)

    def incr_many(self, counts: list[tuple[str, int, int]]) -> list[int]:
        """``incr`` each ``(key, expiry, amount)`` in one round trip (a pipeline of the script)."""
        if self._incr_with_expiry is None or self.outage.down:
            return [self.incr(key, expiry, amount) for key, expiry, amount in counts]
        try:
            try:
                replies = self._pipelined(counts)
            except self.no_script:  # first use, or Redis restarted empty: load the script, once
                self.shared.storage.script_load(INCR_WITH_EXPIRY)
                replies = self._pipelined(counts)
        except (self.shared.base_exceptions, OSError) as exc:
            self.outage.failed(exc)
            return self.memory.incr_many(counts)
        return [int(count) for count, _ in replies]

    def count_together(self, limits: list[tuple[str, int, int]], spends: list[tuple[str, int]]) -> list[tuple[int, float]]:
        """``ExpiringCounters.count_together`` in one round trip to Redis (in this worker's memory while it is down)."""
        if self._count_together is None:  # another shared storage, or a Redis Cluster: key by key
            return count_in_turn(self, limits, spends)
        if not self.outage.should_try():
            return self.memory.count_together(limits, spends)
        keys = [key for key, _, _ in limits] + [key for key, _ in spends]
        args = [len(limits)] + [value for _, expiry, amount in limits for value in (expiry, amount)] + \
               [value for _, expiry in spends for value in (expiry, 0)]
        try:
            replies = self._count_together([self.shared.prefixed_key(key) for key in keys], args)
        except (self.shared.base_exceptions, OSError) as exc:
            self.outage.failed(exc)
            return self.memory.count_together(limits, spends)
        self.outage.recovered()
        now = time.time()
        return [(int(replies[i]), now + max(int(replies[i + 1]), 0) / 1000) for i in range(0, len(replies), 2)]

    def count_and_look(self, limits: list[tuple[str, int, int]], spends: list[tuple[str, int]],
                       look: tuple[list, list]) -> tuple[list[tuple[int, float]], list | None]:
        """``count_together``, then (unless a limit was breached) the reply cache's look (its keys and arguments,
        ``RedisReplyCache.look_call``) in the same script call: the counts, and the look's reply (None when it
        was not made: a limit breached, or Redis away)."""
        if self._count_and_look is None or not self.outage.should_try():
            return self.count_together(limits, spends), None
        keys = [key for key, _, _ in limits] + [key for key, _ in spends]
        args = [len(limits)] + [value for _, expiry, amount in limits for value in (expiry, amount)] + \
               [value for _, expiry in spends for value in (expiry, 0)]
        look_keys, look_args = look
        try:
            replies = self._count_and_look([self.shared.prefixed_key(key) for key in keys] + look_keys,
                                           [len(keys), len(args), *args, *look_args])
        except (self.shared.base_exceptions, OSError) as exc:
            self.outage.failed(exc)
            return self.memory.count_together(limits, spends), None
        self.outage.recovered()
        now = time.time()
        counted = replies[0]
        counts = [(int(counted[i]), now + max(int(counted[i + 1]), 0) / 1000) for i in range(0, len(counted), 2)]
        return counts, replies[1] if len(replies) > 1 else None

    def give_back(self, keys: list[str]) -> None:
        """Take back one unit counted on each of ``keys`` (a request that opened no reply)."""
        if self.outage.down or self._incr_with_expiry is None:
            for key in keys:
                self.memory.decr(key)
            return
        try:
            with self.shared.storage.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.decrby(self.shared.prefixed_key(key), 1)
                pipe.execute()
        except (self.shared.base_exceptions, OSError) as exc:
            self.outage.failed(exc)

    def _pipelined(self, counts: list[tuple[str, int, int]]) -> list:
        # Plain EVALSHA: redis-py's Script objects in a pipeline send SCRIPT EXISTS first, a round trip more.
        with self.shared.storage.pipeline(transaction=False) as pipe:
            for key, expiry, amount in counts:
                pipe.evalsha(self._incr_with_expiry.sha, 1, self.shared.prefixed_key(key), expiry, amount)
            return pipe.execute()

    def _recent(self, key: str):
        counted = self._counted.get()
        return counted.get(key) if counted is not None and not self.outage.down else None

    def get(self, key: str) -> int:
        entry = self._recent(key)
        return entry[0] if entry else self._either("get", key)

    def get_expiry(self, key: str) -> float:
        entry = self._recent(key)
        return entry[1] if entry else self._either("get_expiry", key)

    def clear(self, key: str) -> None:
        self._forget()
        return self._either("clear", key)

    def reset(self) -> int | None:
        self._forget()
        self.memory.reset()
        return self._either("reset")

    def _forget(self) -> None:
        self._counted.set(None)

    def check(self) -> bool:
        """Try the shared storage if a try is due; return whether this worker counts there now."""
        if self.outage.should_try():
            try:
                answered = self.shared.check()  # limits' Redis check answers False rather than raising
            except (self.shared.base_exceptions, OSError) as exc:
                answered, error = False, exc
            else:
                error = "it did not answer a ping"
            if answered:
                self.outage.recovered()
            else:
                self.outage.failed(error)
        return not self.outage.down
