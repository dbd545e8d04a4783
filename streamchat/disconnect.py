"""Notice a client that went away while the upstream is silent.

A WSGI app normally learns of a disconnect only when a write fails, which
never happens while the model is still thinking. Under gevent we can do
better: a tiny greenlet waits until the client socket becomes readable; the
request body has been read, so readable means the peer closed (``recv``
peeks ``b""``) or reset. It then raises ``ClientDisconnected`` in the
request's greenlet, wherever that is blocked, and the body generator's
``finally`` closes the upstream response at once.

Outside gevent (tests with Flask's client, the dev server) it does nothing.
"""

from __future__ import annotations

import socket
from typing import Any


class ClientDisconnected(Exception):
    """The client closed its connection before the reply was complete."""


class ClientWatch:
    """Watch one client socket until ``stop()``; started by ``watch_client()``."""

    def __init__(self, sock: Any = None):
        self.active = sock is not None
        self._greenlet = None
        if self.active:
            import gevent

            self._target = gevent.getcurrent()
            self._hub = gevent.get_hub()
            self._greenlet = gevent.spawn(self._watch, sock)

    def _watch(self, sock: Any) -> None:
        from gevent.socket import wait_read

        try:
            wait_read(sock.fileno())
            gone = not sock.recv(1, socket.MSG_PEEK)
        except OSError:
            gone = True
        if gone:
            self._greenlet = None
            # Throw from the hub, as gevent.kill does, never from this greenlet.
            self._hub.loop.run_callback(self._interrupt)

    def _interrupt(self) -> None:
        if self.active and not self._target.dead:
            self.active = False
            self._target.throw(ClientDisconnected())

    def stop(self) -> None:
        """Stop watching; call when the reply is complete."""
        self.active = False
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None


def watch_client(environ: dict[str, Any]) -> ClientWatch:
    """Start watching the request's client socket, when the server is gunicorn under gevent."""
    sock = environ.get("gunicorn.socket")
    if sock is None or not _gevent_patched():
        return ClientWatch(None)
    return ClientWatch(sock)


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("socket")
