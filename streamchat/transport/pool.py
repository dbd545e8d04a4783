"""urllib3 connection pools tuned for long streams: liveness without the event loop, resumable TLS, idle ages.

Before reusing a pooled connection urllib3 asks whether the server closed it,
with ``select.poll`` and a zero timeout. Under gevent that poll is a trip
through the event loop: every other ready stream runs before the new request
is sent, which under load is what a new chat waits for. A non-blocking peek
at the OS socket answers the same question at once: readable (closed, reset,
or unexpected bytes) means the connection cannot be reused.

An HTTPS connection hands its TLS session to the shared context once a
response's headers are in (``tls.py``), and every connection returned to the
pool notes when (``idle_since``), which the warm connections go by (``warm.py``).
"""

from __future__ import annotations

import socket
import ssl
import time

import urllib3.connection
import urllib3.connectionpool
from urllib3.util.wait import wait_for_read


class _PeekLiveness:
    sock: object
    idle_since: float = 0.0  # time.monotonic() when it last went back to the pool

    @property
    def is_connected(self) -> bool:
        if self.sock is None:
            return False
        return not self._readable() or self._only_tls_records()

    def _readable(self) -> bool:
        os_sock = getattr(self.sock, "_sock", None)  # gevent's sockets, plain or TLS, wrap the OS socket
        if os_sock is None:
            return wait_for_read(self.sock, timeout=0.0)
        try:
            os_sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False  # nothing to read: still open and idle
        except OSError:
            return True  # reset: the read below fails too
        return True  # end of stream, bytes nobody asked for, or TLS records that carry no data

    def _only_tls_records(self) -> bool:
        # A TLS 1.3 server sends its session tickets after the handshake: a connection opened ahead of need
        # (warm.py) has them waiting unread. A read that finds no data after them means the connection is
        # idle and sound; it also hands the tickets to the TLS layer (tls.py remembers them).
        sock = self.sock
        if not isinstance(sock, ssl.SSLSocket):
            return False
        timeout = sock.gettimeout()
        sock.settimeout(0)
        try:
            sock.recv(1)
        except ssl.SSLWantReadError:
            return True
        except OSError:
            return False
        finally:
            sock.settimeout(timeout)
        return False  # end of stream, or bytes nobody asked for


class HTTPConnection(_PeekLiveness, urllib3.connection.HTTPConnection):
    pass


class HTTPSConnection(_PeekLiveness, urllib3.connection.HTTPSConnection):
    def getresponse(self):  # type: ignore[override]
        response = super().getresponse()
        # The headers are in, so a TLS 1.3 server's tickets (sent after its handshake) have been read.
        remember = getattr(self.ssl_context, "remember", None)
        if remember is not None and self.sock is not None:
            remember(self.sock)
        return response


class _IdleAges:
    def _put_conn(self, conn):  # type: ignore[no-untyped-def]
        if conn is not None:
            conn.idle_since = time.monotonic()
        super()._put_conn(conn)  # type: ignore[misc]


class HTTPConnectionPool(_IdleAges, urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = HTTPConnection


class HTTPSConnectionPool(_IdleAges, urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = HTTPSConnection


#: For ``PoolManager.pool_classes_by_scheme``.
POOL_CLASSES = {"http": HTTPConnectionPool, "https": HTTPSConnectionPool}
