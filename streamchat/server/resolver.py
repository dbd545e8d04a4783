"""Name resolution under gevent: an IP address answered in place, a name looked up once for many.

gevent's default resolver runs every ``getaddrinfo`` in a pool thread so that a
slow DNS server never blocks the other greenlets. A ramp of new conversations
opens a new upstream connection per stream, and so a lookup per stream, each a
hand-over of the GIL to a pool thread and back while the main thread is busy
serving streams (and queued for the pool's ten threads). In the benchmark that
set the tail: 200 streams' TTFB p99 was 221 ms against 204 with the lookups
gone, 1,000 streams' 680 ms against 325.

So this resolver:

- answers an IP address in the calling greenlet: ``getaddrinfo`` with
  ``AI_NUMERICHOST`` does no I/O and refuses a name at once;
- looks a name up in the thread pool as before, but once for every greenlet
  that asks while the lookup is under way, and keeps the answer for
  ``NAME_CACHE_SECONDS`` (aiohttp's DNS cache has the same default). Pooled
  upstream connections outlive that by far, so a DNS change reaches new
  connections about as soon as it did. Failures are shared with the greenlets
  that waited for them, never kept.

With lookups that rare, ``install()`` also lets an idle pool thread end after
``IDLE_THREAD_SECONDS`` instead of gevent's 5 s: while one merely waited, the
200-stream TTFB p99 rose from 205 to 220 ms. Any second OS thread in the worker
does the same here, even one blocked on a lock for good (measured; most likely
the cost of a multi-threaded process in this machine's sandbox), so the worker
stays single-threaded between lookups.
"""

from __future__ import annotations

import _socket
import time

import gevent
from gevent.event import AsyncResult
from gevent.resolver.thread import Resolver as ThreadResolver

NAME_CACHE_SECONDS = 10.0
NAME_CACHE_SIZE = 256
IDLE_THREAD_SECONDS = 0.05


def install() -> None:
    """Make this the resolver of the gevent hub; call after monkey-patching, before the first lookup."""
    gevent.config.threadpool_idle_task_timeout = IDLE_THREAD_SECONDS
    gevent.config.resolver = f"{__name__}.Resolver"


class Resolver(ThreadResolver):
    """gevent's thread resolver, without the thread for an IP address and with one lookup per name."""

    def __init__(self, hub=None, clock=time.monotonic):
        super().__init__(hub)
        self.clock = clock
        self._answers: dict[tuple, tuple[float, list]] = {}  # getaddrinfo arguments -> (expires, answer)
        self._lookups: dict[tuple, AsyncResult] = {}  # the same -> the lookup under way

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002 (socket's names)
        try:
            return _socket.getaddrinfo(host, port, family, type, proto, flags | _socket.AI_NUMERICHOST)
        except _socket.gaierror:
            pass  # a name
        key = (host, port, family, type, proto, flags)
        while True:
            kept = self._answers.get(key)
            if kept is not None and kept[0] > self.clock():
                return list(kept[1])  # a copy: callers own what getaddrinfo returns
            lookup = self._lookups.get(key)
            if lookup is None:
                return self._look_up(key)
            answer = lookup.get()  # raises the lookup's error; None when the greenlet asking was interrupted
            if answer is not None:
                return list(answer)

    def _look_up(self, key: tuple) -> list:
        lookup = self._lookups[key] = AsyncResult()
        try:
            answer = super().getaddrinfo(*key)
        except OSError as exc:  # the name's own failure: the greenlets waiting for it get it too
            lookup.set_exception(exc)
            raise
        else:
            self._keep(key, answer)
            lookup.set(answer)
            return answer
        finally:
            del self._lookups[key]
            if not lookup.ready():
                lookup.set(None)  # this greenlet was interrupted (its client left...): the others ask again

    def _keep(self, key: tuple, answer: list) -> None:
        now = self.clock()
        if len(self._answers) >= NAME_CACHE_SIZE:
            self._answers = {k: v for k, v in self._answers.items() if v[0] > now}
        self._answers[key] = (now + NAME_CACHE_SECONDS, answer)
