"""Name resolution under gevent: an IP address is answered in place, a name in gevent's thread pool.

gevent's default resolver runs every ``getaddrinfo`` in a pool thread so that
a slow DNS server never blocks the other greenlets. For an IP address there is
nothing to wait for, and the thread costs a lot exactly when it hurts: at a ramp
of new upstream connections the pool thread and the worker's main thread hand
the GIL to each other, and each hand-over can wait for the interpreter's switch
interval (5 ms) while the main thread is busy serving streams. That set the
200-stream benchmark's tail (TTFB p99 221 ms against 204 ms answered in place).

``getaddrinfo`` with ``AI_NUMERICHOST`` does no I/O: it answers an address and
refuses a name at once, so a name still goes to the thread pool exactly as
before. Upstreams on an IP address (a local vLLM, Ollama or llama.cpp, the tests
and the benchmark) gain; every other lookup behaves as with gevent's default.

``wsgi.py`` installs it through ``gevent.config.resolver``.
"""

from __future__ import annotations

import _socket

from gevent.resolver.thread import Resolver as ThreadResolver


class Resolver(ThreadResolver):
    """gevent's thread resolver, except that ``getaddrinfo`` of an IP address needs no thread."""

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002 (socket's names)
        try:
            return _socket.getaddrinfo(host, port, family, type, proto, flags | _socket.AI_NUMERICHOST)
        except _socket.gaierror:
            # A name (or an address the system refuses): let the thread pool answer as it always did.
            return super().getaddrinfo(host, port, family, type, proto, flags)
