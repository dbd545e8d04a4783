"""Token budgets that hold under concurrency: reserve before calling a model, settle on what the reply used.

A request reserves its estimated prompt tokens plus its ``max_tokens`` against
the per-client and the global budget at once, before any provider is called; if
the reservation does not fit either, the rules answer (reason ``budget``). When
the reply ends, the reservation is replaced by what it used (the upstream's
usage, else an estimate; a fallback reply used nothing). Counting after the
fact would let fifty concurrent requests each see the budget unspent.

Budgets are fixed windows (``N/period`` as ``limits`` parses them: ``20000/day``).
With ``REDIS_URL`` the counts live in Redis, one key per scope and window, and
reserving is one script call (both budgets checked and charged atomically), so
every worker of every instance shares them; without it, or while Redis is
away (one warning per outage, ``degraded`` health), each process counts in its
own memory. A reservation remembers the windows it charged, so a reply that
ends after its window rolled over settles the window it was charged in.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from limits import parse
from limits.limits import RateLimitItem

from ..domain.usage import Reservation
from .outage import Outage
from .redis import redis_errors

PREFIX = "streamchat:tokens:"

# KEYS: the per-client and global window keys ("" when that budget is off). ARGV: tokens, client limit,
# global limit, client ttl ms, global ttl ms. Returns {fits (1/0), client used, global used} after the call.
RESERVE = """
local n = tonumber(ARGV[1])
local used = {0, 0}
for i = 1, 2 do
  if KEYS[i] ~= '' then used[i] = tonumber(redis.call('GET', KEYS[i]) or '0') end
end
for i = 1, 2 do
  local limit = tonumber(ARGV[1 + i])
  if KEYS[i] ~= '' and used[i] + n > limit then return {0, used[1], used[2]} end
end
for i = 1, 2 do
  if KEYS[i] ~= '' then
    used[i] = redis.call('INCRBY', KEYS[i], n)
    if used[i] == n then redis.call('PEXPIRE', KEYS[i], ARGV[3 + i]) end
  end
end
return {1, used[1], used[2]}
"""
# KEYS: the window keys a reservation charged. ARGV: the change (used - reserved). An expired window stays gone.
SETTLE = """
for i = 1, #KEYS do
  if KEYS[i] ~= '' and redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], ARGV[1]) end
end
return 1
"""


class TokenBudgets:
    """The per-client and global token budgets, in Redis (``client``) or this process's memory."""

    def __init__(self, per_client: str, overall: str, client: Any = None):
        self.per_client: RateLimitItem | None = parse(per_client) if per_client else None
        self.overall: RateLimitItem | None = parse(overall) if overall else None
        self._written = (per_client or None, overall or None)  # as the settings say them, for /healthz
        self.client = client
        self.outage = Outage("token budgets (Redis)", "each worker counts tokens in its own memory")
        self._memory: dict[str, tuple[int, float]] = {}  # key -> (used, expires at, monotonic)
        self._lock = threading.Lock()
        self._reserve = client.register_script(RESERVE) if client is not None else None
        self._settle = client.register_script(SETTLE) if client is not None else None

    @property
    def enabled(self) -> bool:
        return self.per_client is not None or self.overall is not None

    # -- the two operations -------------------------------------------------------------------

    def reserve(self, who: str, tokens: int) -> tuple[Reservation | None, int]:
        """Reserve ``tokens`` for ``who``; return the reservation (None: it does not fit) and what remains."""
        now = time.time()
        keys = (self._key("client:" + who, self.per_client, now), self._key("global", self.overall, now))
        limits = (self.per_client.amount if self.per_client else 0, self.overall.amount if self.overall else 0)
        ttls = (self._ttl_ms(self.per_client, now), self._ttl_ms(self.overall, now))
        if self._redis_usable():
            try:
                fits, used_client, used_global = self._reserve(keys=list(keys), args=[tokens, *limits, *ttls])
                self.outage.recovered()
                return self._answer(bool(fits), tokens, keys, (int(used_client), int(used_global)), limits, True)
            except redis_errors() as exc:
                self.outage.failed(exc)
        fits, used = self._reserve_in_memory(keys, tokens, limits, ttls)
        return self._answer(fits, tokens, keys, used, limits, False)

    def settle(self, reservation: Reservation, used: int) -> None:
        """Replace ``reservation`` by the ``used`` tokens (0 for a reply no model wrote); once only."""
        if reservation.settled:
            return
        reservation.settled = True
        change = max(0, used) - reservation.tokens
        if change == 0:
            return
        if reservation.in_redis and self._redis_usable():
            try:
                self._settle(keys=list(reservation.keys), args=[change])
                return
            except redis_errors() as exc:
                self.outage.failed(exc)
                return  # its window keeps the reservation: the budget errs on the side of spending less
        with self._lock:
            for key in reservation.keys:
                entry = self._memory.get(key)
                if key and entry is not None and entry[1] > time.monotonic():
                    self._memory[key] = (max(0, entry[0] + change), entry[1])

    def remaining(self, who: str) -> int | None:
        """What ``who`` may still spend now: the smaller of its own and the global remainder; None with no budget."""
        if not self.enabled:
            return None
        now = time.time()
        keys = (self._key("client:" + who, self.per_client, now), self._key("global", self.overall, now))
        used = self._used(keys)
        limits = (self.per_client.amount if self.per_client else 0, self.overall.amount if self.overall else 0)
        return self._left(keys, used, limits)

    def health(self) -> dict[str, Any]:
        """Each budget's window, what is left globally, and where the counts live."""
        info: dict[str, Any] = {
            "per_client": self._written[0], "global": self._written[1],
            "store": "redis" if self.client is not None else "memory (this worker's own)"}
        if self.overall is not None:
            key = self._key("global", self.overall, time.time())
            info["global_remaining"] = max(0, self.overall.amount - self._used((key, ""))[0])
        info["healthy"] = not (self.client is not None and self.outage.down)
        if not info["healthy"]:
            info["error"] = self.outage.health().get("error")
        return info

    # -- where the counts live ----------------------------------------------------------------

    def _redis_usable(self) -> bool:
        return self.client is not None and self.outage.should_try()

    def _reserve_in_memory(self, keys, tokens, limits, ttls) -> tuple[bool, tuple[int, int]]:
        with self._lock:
            now = time.monotonic()
            used = [self._memory_used(key, now) for key in keys]
            if any(key and used[i] + tokens > limits[i] for i, key in enumerate(keys)):
                return False, (used[0], used[1])
            for i, key in enumerate(keys):
                if key:
                    expires = self._memory[key][1] if key in self._memory and self._memory[key][1] > now \
                        else now + ttls[i] / 1000
                    used[i] += tokens
                    self._memory[key] = (used[i], expires)
            if len(self._memory) > 10_000:  # per-client windows of clients long gone
                self._memory = {k: v for k, v in self._memory.items() if v[1] > now}
            return True, (used[0], used[1])

    def _memory_used(self, key: str, now: float) -> int:
        entry = self._memory.get(key)
        return entry[0] if key and entry is not None and entry[1] > now else 0

    def _used(self, keys: tuple[str, str]) -> tuple[int, int]:
        if self._redis_usable():
            try:
                values = self.client.mget([key or "-" for key in keys])
                self.outage.recovered()
                return tuple(int(value or 0) if key else 0 for key, value in zip(keys, values))  # type: ignore
            except redis_errors() as exc:
                self.outage.failed(exc)
        with self._lock:
            now = time.monotonic()
            return self._memory_used(keys[0], now), self._memory_used(keys[1], now)

    # -- windows ----------------------------------------------------------------------------------

    @staticmethod
    def _key(scope: str, item: RateLimitItem | None, now: float) -> str:
        if item is None:
            return ""
        period = item.get_expiry()
        return f"{PREFIX}{scope}:{period}:{math.floor(now / period)}"

    @staticmethod
    def _ttl_ms(item: RateLimitItem | None, now: float) -> int:
        if item is None:
            return 0
        period = item.get_expiry()
        return max(1, int(((math.floor(now / period) + 1) * period - now) * 1000))

    def _answer(self, fits, tokens, keys, used, limits, in_redis) -> tuple[Reservation | None, int]:
        return (Reservation(tokens, keys, in_redis) if fits else None), self._left(keys, used, limits)

    @staticmethod
    def _left(keys, used, limits) -> int:
        return max(0, min(limits[i] - used[i] for i, key in enumerate(keys) if key))

