"""The gunicorn worker: gevent's own, with a cheaper write to the client.

gevent's ``socket.sendall`` asks the kernel for the socket's send-buffer size
(a ``getsockopt`` system call) on every call, to cut a large write into pieces,
and then sends. A reply chunk is a few bytes that the kernel nearly always takes
whole, so here one ``send`` on the OS socket (non-blocking under gevent) does
it, and only what the kernel did not take goes through gevent's ``sendall``,
which waits for the client to drain its buffer. Measured with 300 streams of
300 chunks: 27.7 -> 25.2 µs of worker CPU per forwarded chunk.

``gunicorn.conf.py`` names ``StreamingWorker`` as the worker class.
"""

from __future__ import annotations

from gevent import socket as gevent_socket
from gunicorn.workers.ggevent import GeventWorker


class ClientSocket(gevent_socket.socket):
    """A gevent socket whose ``sendall`` tries one plain ``send`` first."""

    __slots__ = ()

    def sendall(self, data, flags=0):
        try:
            sent = self._sock.send(data, flags)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            super().sendall(memoryview(data)[sent:], flags)


class StreamingWorker(GeventWorker):
    """gunicorn's gevent worker, writing to its clients through ``ClientSocket``."""

    def handle(self, listener, client, addr):
        if type(client) is gevent_socket.socket:  # not a TLS socket: those keep their own sendall
            # The same object and layout (no new slots), only its sendall changes; gevent's
            # server has already built the socket, so re-classing is free where wrapping is not.
            client.__class__ = ClientSocket
        super().handle(listener, client, addr)
