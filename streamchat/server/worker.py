"""The gunicorn worker: gevent's own, with a cheaper and bounded write to the client.

gevent's ``socket.sendall`` asks the kernel for the socket's send-buffer size
(a ``getsockopt`` system call) on every call, to cut a large write into pieces,
and then sends. A reply chunk is a few bytes that the kernel nearly always takes
whole, so here one ``send`` on the OS socket (non-blocking under gevent) does
it, and only what the kernel did not take goes through gevent's ``sendall``,
which waits for the client to drain its buffer. Measured with 300 streams of
300 chunks: 27.7 -> 25.2 µs of worker CPU per forwarded chunk.

That wait is bounded: a client that reads nothing for ``CLIENT_TIMEOUT``
seconds would otherwise hold its stream, and the upstream connection behind
it, for as long as it keeps the connection open. Either way the wait ends
(the timeout, or the client watch seeing the client leave), gunicorn is told
the pipe broke, which it takes quietly as the client being gone, and closes
the reply, which closes the upstream response.

A client also gets a bounded time to send its request head: gunicorn's gevent
worker waits for a head for as long as the keep-alive timeout (75 s), however
slowly it trickles in, so a few thousand clients sending a header byte every
few seconds filled every connection slot and starved everyone else. Here a
connection may stay idle for the keep-alive timeout, but from the first byte
of a request its head must be complete within ``CLIENT_HEADER_TIMEOUT``
seconds, or the connection is closed (what nginx's ``client_header_timeout`` does).

On SIGTERM the worker drains (``drain.py``): unready at once, idle kept-alive
connections closed, open replies given ``DRAIN_SECONDS`` and then ended with
the restarting notice, the exit hooks run before the process ends.

``gunicorn.conf.py`` names ``StreamingWorker`` as the worker class.
"""

from __future__ import annotations

import errno
import logging
from typing import Callable

import gevent
from gevent import socket as gevent_socket
from gunicorn.workers.ggevent import GeventWorker

from ..config import parse_settings
from ..errors import ClientDisconnected, ReplyStopped, ServiceRestarting
from .drain import DRAIN

log = logging.getLogger("streamchat")

#: id(ClientSocket) -> what to call when its next bytes arrive (a request head's first byte is awaited).
_first_byte_waiters: dict[int, Callable[[], None]] = {}
DRAIN_IDLE = 1.0  # seconds a new connection may idle before its first request while the worker drains


def _close_idle_connections() -> None:
    # Kept-alive connections waiting for their next request would hold the worker until their
    # keep-alive time (75 s), past any platform's kill: close them now.
    for waiter in list(_first_byte_waiters.values()):
        waiter.__self__.expire()


class ClientSocket(gevent_socket.socket):
    """A gevent socket whose ``sendall`` tries one plain ``send`` first, and waits at most ``send_timeout``."""

    __slots__ = ()
    send_timeout = 60.0  # set from CLIENT_TIMEOUT by StreamingWorker.load_wsgi

    def recv(self, *args):
        data = super().recv(*args)
        if _first_byte_waiters and data:
            waiter = _first_byte_waiters.pop(id(self), None)
            if waiter is not None:
                waiter()
        return data

    def sendall(self, data, flags=0):
        try:
            sent = self._sock.send(data, flags)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self._send_when_drained(memoryview(data)[sent:], flags)

    def _send_when_drained(self, rest, flags) -> None:
        previous = self.timeout
        self.settimeout(self.send_timeout)
        try:
            super().sendall(rest, flags)
        except TimeoutError:
            log.warning("the client read nothing for %g s: closing its stream", self.send_timeout)
            raise BrokenPipeError(errno.EPIPE, "the client stopped reading") from None
        except ClientDisconnected:
            # Seen by the client watch while this write waited: not an error for gunicorn to log.
            raise BrokenPipeError(errno.EPIPE, "the client closed the connection") from None
        except (ReplyStopped, ServiceRestarting):
            # The reply was stopped, or the drain ended it, while this write waited on a client that reads
            # nothing: end the connection as for a client gone.
            raise BrokenPipeError(errno.EPIPE, "the reply was ended while its client read nothing") from None
        finally:
            self.settimeout(previous)


class RequestHeadTimeout:
    """Around gunicorn's read of a request head: ``idle`` seconds for its first byte, then ``head`` for the rest.

    Like the ``gevent.Timeout(keepalive, False)`` it replaces, it ends the read
    quietly when it fires: gunicorn then sees no request and closes the connection.
    """

    def __init__(self, sock: ClientSocket, idle: float, head: float):
        self.sock = sock
        self.head = head
        self.timeout = gevent.Timeout(min(idle, DRAIN_IDLE) if DRAIN.draining else idle)
        self.greenlet = gevent.getcurrent()

    def __enter__(self) -> "RequestHeadTimeout":
        self.timeout.start()
        _first_byte_waiters[id(self.sock)] = self._first_byte
        return self

    def expire(self) -> None:
        """End the wait now (the connection closes quietly), if no byte of a request has come yet."""
        if _first_byte_waiters.get(id(self.sock)) == self._first_byte:
            timeout = self.timeout
            gevent.get_hub().loop.run_callback(lambda: self.greenlet.throw(timeout))

    def _first_byte(self) -> None:
        self.timeout.close()
        self.timeout = gevent.Timeout(self.head)
        self.timeout.start()

    def __exit__(self, kind, value, traceback) -> bool:
        _first_byte_waiters.pop(id(self.sock), None)
        self.timeout.close()
        return value is self.timeout  # our own timeout: swallowed, the connection closes


class StreamingWorker(GeventWorker):
    """gunicorn's gevent worker: ``ClientSocket`` writes, bounded request heads, and a drain on SIGTERM."""

    header_timeout = 10.0  # set from CLIENT_HEADER_TIMEOUT by load_wsgi
    drain_seconds = 20.0  # set from DRAIN_SECONDS by load_wsgi

    def load_wsgi(self):
        super().load_wsgi()  # imports wsgi.py, which checks every setting as it builds the app
        settings = parse_settings(("CLIENT_TIMEOUT", "CLIENT_HEADER_TIMEOUT", "DRAIN_SECONDS"))
        ClientSocket.send_timeout = settings.client_timeout
        type(self).header_timeout = settings.client_header_timeout
        type(self).drain_seconds = settings.drain_seconds
        self._clients: dict[object, ClientSocket] = {}  # greenlet -> its connection, for timeout_ctx

    def handle_exit(self, sig, frame):
        """SIGTERM: gunicorn stops accepting within a second; drain the replies, close the idle connections."""
        super().handle_exit(sig, frame)
        if not DRAIN.draining:
            gevent.spawn(DRAIN.run, self.drain_seconds)
            gevent.spawn(_close_idle_connections)

    def run(self):
        try:
            super().run()  # returns once no connection is left, or gunicorn's graceful timeout is up
        finally:
            DRAIN.exit()

    def handle(self, listener, client, addr):
        if type(client) is gevent_socket.socket:  # not a TLS socket: those keep their own sendall
            # The same object and layout (no new slots), only its sendall changes; gevent's
            # server has already built the socket, so re-classing is free where wrapping is not.
            client.__class__ = ClientSocket
            current = gevent.getcurrent()
            self._clients[current] = client
            try:
                return super().handle(listener, client, addr)
            finally:
                del self._clients[current]
        super().handle(listener, client, addr)

    def timeout_ctx(self):
        """Bound the wait for the next request head (gunicorn calls it around each head's read)."""
        client = self._clients.get(gevent.getcurrent())
        if client is None:  # a TLS connection: gunicorn's own bound, the keep-alive timeout
            return super().timeout_ctx()
        return RequestHeadTimeout(client, self.cfg.keepalive, min(self.header_timeout, self.cfg.keepalive))
