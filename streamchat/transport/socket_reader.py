"""Read the upstream socket with a timeout on every read, cheaply enough for every chunk of every stream.

A gevent socket with a timeout starts and stops a timer around every wait,
and tries ``recv`` before waiting, which during a stream (a chunk every few
tens of milliseconds) is one ``EAGAIN`` system call per chunk. Both cost more
than everything else we do with a chunk. ``GeventSocketReader`` instead
waits first, then reads, on one io watcher for the whole stream, and keeps
one timer that is moved only when a deadline comes *earlier*: when it fires
early (the deadline moved later since) it re-arms itself, so a stream that
keeps talking costs no timer work per read. Waiting first is also what lets
a stream that always has data (a burst) share the worker: every read goes
through the hub. ``turn_passer`` does the same for a reader that cannot wait first.

Over TLS (every hosted provider) the OS socket carries encrypted records:
``GeventTLSReader`` waits on the same watcher but reads through the SSL
socket, and skips the wait when decrypted bytes are already buffered.

Outside gevent (tests in one process, the dev server) ``SocketReader`` uses
the socket's own timeout.

Relies on gevent's sockets keeping the OS socket as ``_sock`` (gevent 26.9).
"""

from __future__ import annotations

import functools
import math
import socket
import time
from typing import Any, Callable


class SocketReader:
    """``recv(size, timeout)`` on a blocking socket."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def recv(self, size: int, timeout: float) -> bytes:
        """Return up to ``size`` bytes (b"" at the end); raise ``TimeoutError`` after ``timeout`` seconds."""
        self._sock.settimeout(timeout)
        return self._sock.recv(size)

    def close(self) -> None:
        """Stop watching the socket (it is not closed: it belongs to the connection pool)."""


class GeventSocketReader(SocketReader):
    """``recv(size, timeout)`` on a gevent socket, with one watcher and one timer per stream."""

    def __init__(self, sock: Any):
        import gevent

        super().__init__(sock._sock)  # the OS socket, non-blocking under gevent
        self._getcurrent = gevent.getcurrent
        self._hub = gevent.get_hub()
        self._readable = self._hub.loop.io(sock.fileno(), 1)  # 1: readable
        self._timer = None
        self._timer_at = math.inf  # when the timer fires (monotonic)
        self._deadline = math.inf  # when the current wait must end
        self._waiting = None  # the greenlet blocked in recv()

    def recv(self, size: int, timeout: float) -> bytes:
        self._deadline = deadline = time.monotonic() + timeout
        if deadline < self._timer_at:
            self._arm(deadline)
        while True:
            if not self._buffered():
                self._waiting = self._getcurrent()
                try:
                    self._hub.wait(self._readable)
                finally:
                    self._waiting = None
            try:
                return self._read(size)
            except BlockingIOError:
                continue  # a spurious wake-up: wait again

    def _buffered(self) -> bool:
        return False  # a plain socket buffers nothing above the OS

    def _read(self, size: int) -> bytes:
        return self._sock.recv(size)

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.close()
        self._timer = self._hub.loop.timer(max(0.0, deadline - time.monotonic()))
        self._timer_at = deadline
        self._timer.start(self._fired)

    def _fired(self) -> None:
        # Runs in the hub. The deadline may have moved on since the timer was set: then wait for it.
        self._timer_at = math.inf
        if time.monotonic() < self._deadline:
            self._arm(self._deadline)
        elif self._waiting is not None:
            self._waiting.throw(TimeoutError("timed out"))
        # Otherwise the stream is busy elsewhere (writing to its client); its next recv() sets a new deadline.

    def close(self) -> None:
        for watcher in (self._readable, self._timer):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self._readable = self._timer = None


class GeventTLSReader(GeventSocketReader):
    """``GeventSocketReader`` over TLS: the watcher waits, the SSL socket decrypts.

    The SSL socket is read with a zero timeout, so gevent never waits (and never starts a timer) itself:
    a read that finds only part of a record raises ``SSLWantReadError``, and the watcher waits for more.
    """

    def __init__(self, sock: Any):
        from gevent.ssl import SSLWantReadError, SSLWantWriteError

        super().__init__(sock)
        self._tls = sock
        self._timeout_before = sock.gettimeout()  # given back with the connection, for its next request
        # Wanting to write while reading is a renegotiation, which TLS 1.3 does not have: wait and retry.
        self._incomplete = (SSLWantReadError, SSLWantWriteError)

    def _buffered(self) -> bool:
        return self._tls.pending() > 0  # decrypted bytes the last read left: no wait needed

    def _read(self, size: int) -> bytes:
        self._tls.settimeout(0.0)  # every time: the body's first read sets a timeout for http.client's buffer
        try:
            data = self._tls.recv(size)
        except self._incomplete:
            raise BlockingIOError from None
        # A TLS read returns one record, where a plain read takes all the kernel holds: read on while whole
        # records wait, so that a stream that fell behind catches up in one write to its client, as over
        # plain HTTP (1,000 streams: 100,000 client writes became 52,000; bench/run --only tls).
        while data and len(data) < size:
            try:
                more = self._tls.recv(size - len(data))
            except self._incomplete:
                break
            if not more:
                break  # the end: the next read says so
            data += more
        return data

    def close(self) -> None:
        super().close()
        self._tls.settimeout(self._timeout_before)


def turn_passer(sock: Any) -> Callable[[], None]:
    """Return what lets the other greenlets run once: ``gevent.sleep(0)`` for a gevent socket, else nothing.

    A read that finds data waiting returns without a switch, so a stream whose upstream always has more
    would hold the worker to the end of its body. ``GeventSocketReader`` passes the turn by waiting first;
    a reader that cannot (a body urllib3 must decode) calls this after each read.
    """
    if _is_gevent(sock):
        import gevent

        return functools.partial(gevent.sleep, 0)
    return _nothing


def _nothing() -> None:
    pass


def _is_gevent(sock: Any) -> bool:
    return type(sock).__module__.startswith("gevent.")


def socket_reader(sock: Any) -> SocketReader:
    """Return the reader for ``sock``: the gevent one for a gevent socket, its TLS variant over TLS."""
    if _is_gevent(sock):
        return GeventTLSReader(sock) if hasattr(sock, "pending") else GeventSocketReader(sock)
    return SocketReader(sock)
