"""urllib3 connection pools whose check of an idle connection does not go through the event loop.

Before reusing a pooled connection urllib3 asks whether the server closed it,
with ``select.poll`` and a zero timeout. Under gevent that poll is a trip
through the event loop: every other ready stream runs before the new request
is sent, which under load is what a new chat waits for. A non-blocking peek
at the OS socket answers the same question at once: readable (closed, reset,
or unexpected bytes) means the connection cannot be reused.
"""

from __future__ import annotations

import socket

import urllib3.connection
import urllib3.connectionpool


class _PeekLiveness:
    sock: object

    @property
    def is_connected(self) -> bool:
        os_sock = getattr(self.sock, "_sock", None)  # gevent's sockets, plain or TLS, wrap the OS socket
        if os_sock is None:
            return super().is_connected  # type: ignore[misc]
        try:
            os_sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True  # nothing to read: still open and idle
        except OSError:
            return False
        return False  # end of stream, or bytes nobody asked for


class HTTPConnection(_PeekLiveness, urllib3.connection.HTTPConnection):
    pass


class HTTPSConnection(_PeekLiveness, urllib3.connection.HTTPSConnection):
    pass


class HTTPConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = HTTPConnection


class HTTPSConnectionPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = HTTPSConnection


#: For ``PoolManager.pool_classes_by_scheme``.
POOL_CLASSES = {"http": HTTPConnectionPool, "https": HTTPSConnectionPool}
