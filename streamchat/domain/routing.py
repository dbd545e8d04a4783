"""Which upstream, and which of its keys, a request tries first, then next.

Tiers go in ascending order. Within a tier the first pick is by weight among
the upstreams that are not cooling down and have a key that is not; then the
rest of the tier in the file's order; then the next tier. The rules come after
the last tier (``relay``).

An upstream's keys take turns: each request starts at the next one, and goes
on to the others when a key is rate-limited (429) or refused (401/403). What
cools down lives in the circuit breaker under the upstream's name (its own
faults: 5xx, timeouts, refused connections, broken streams, and a 429 when it
has one key, with no other to turn to) and under ``<name>#<position>`` for a
key (counted from 1, as the logs show it): shared through Redis by every
worker of every instance when the breaker is.
"""

from __future__ import annotations

import itertools
import random
from typing import Iterator, Sequence

from .breaker import CircuitBreaker
from .providers.base import Provider

#: How long a key the upstream refused (401/403) is left alone: a person must fix it, not a retry.
KEY_REJECTED_COOLDOWN = 3600.0


def key_name(upstream: str, key: int) -> str:
    """The breaker's and the logs' name of an upstream's key at position ``key`` (from 0): ``groq#2``."""
    return f"{upstream}#{key + 1}"


class Router:
    """Orders a request's candidates: upstreams by tier and weight, each upstream's keys in turn."""

    def __init__(self, chain: Sequence[Provider], breaker: CircuitBreaker, rng: random.Random | None = None):
        self.chain = list(chain)
        self.breaker = breaker
        self._tiers = [list(group) for _, group in itertools.groupby(
            sorted(self.chain, key=lambda p: p.tier), key=lambda p: p.tier)]
        self._turns = {id(p): itertools.count() for p in self.chain}
        self._rng = rng or random.Random()

    def upstreams(self, prefer: str | None = None) -> Iterator[Provider]:
        """Yield the upstreams in the order this request tries them (``prefer``: that one first)."""
        preferred = [p for p in self.chain if p.name == prefer]
        yield from preferred
        for tier in self._tiers:
            rest = [p for p in tier if p not in preferred]
            ready = [p for p in rest if self.usable(p)]
            if len(ready) > 1:
                first = self._rng.choices(ready, weights=[p.weight for p in ready])[0]
                yield first
                yield from (p for p in rest if p is not first)
            else:
                yield from ready
                yield from (p for p in rest if p not in ready)

    def keys(self, upstream: Provider) -> list[int]:
        """Return the positions of ``upstream``'s keys to try, this request's turn first, cooling ones left out."""
        count = len(upstream.api_keys)
        if not count:
            return [0]  # a keyless server: the upstream's own cool-down speaks for it
        start = next(self._turns[id(upstream)]) % count
        order = [(start + n) % count for n in range(count)]
        return [k for k in order if self.breaker.skip_reason(key_name(upstream.name, k)) is None]

    def usable(self, upstream: Provider) -> bool:
        """Whether ``upstream`` is not cooling down and has a key that is not."""
        if self.breaker.skip_reason(upstream.name) is not None:
            return False
        return not upstream.api_keys or self.cooling_keys(upstream) < len(upstream.api_keys)

    def cooling_keys(self, upstream: Provider) -> int:
        """How many of ``upstream``'s keys are cooling down now."""
        return sum(self.breaker.skip_reason(key_name(upstream.name, k)) is not None
                   for k in range(len(upstream.api_keys)))
