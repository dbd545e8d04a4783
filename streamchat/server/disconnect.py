"""Notice a client that went away while the upstream is silent, or that is slow to send its request.

A WSGI app normally learns of a disconnect only when a write fails, which
never happens while the model is still thinking. Under gevent we can do
better: an io watcher on the client socket fires when it becomes readable;
the request body has been read, so readable means the peer closed (``recv``
peeks ``b""``) or reset. The watcher's callback, running in gevent's hub,
raises ``ClientDisconnected`` in the request's greenlet wherever that is
blocked, and the reply's ``finally`` closes the upstream response.
A bare watcher costs no greenlet of its own per request.

``read_body_within`` bounds the time a client may take to send its request
body: gunicorn reads it only when the app asks, with no deadline of its own.

Outside gevent (tests with Flask's client, the dev server) both do nothing.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from ..errors import ClientDisconnected


class ClientTimeout(Exception):
    """The client took longer than allowed to send its request body."""


class MalformedBody(Exception):
    """The request body's framing is broken (a bad chunk size, a missing CRLF...): the client's fault."""


class ClientWatch:
    """Watch one client socket until ``stop()``; started by ``watch_client()``."""

    def __init__(self, sock: Any = None):
        self._watcher = None
        if sock is None:
            return
        import gevent

        # The callback runs in the hub, where gevent's own recv must not wait: peek with the OS socket.
        self._raw = getattr(sock, "_sock", sock)
        self._target = gevent.getcurrent()
        self._watcher = gevent.get_hub().loop.io(sock.fileno(), 1)  # 1: readable
        self._watcher.start(self._readable)

    def _readable(self) -> None:
        try:
            gone = not self._raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return  # a spurious wake-up: keep watching
        except OSError:
            gone = True
        if not gone:
            self.stop()  # the client sent more (a pipelined request): nothing to watch for
        elif self._watcher is not None and not self._target.dead:
            self.stop()
            self._target.throw(ClientDisconnected())

    def stop(self) -> None:
        """Stop watching; call when the reply is complete."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None


def interrupter() -> Callable[[BaseException, Callable[[], bool]], None] | None:
    """Return ``interrupt(error, still)``: raise ``error`` in the calling greenlet wherever it waits.

    The error is raised from the hub, as the client watch raises ``ClientDisconnected``, so the
    greenlet that asks (the stop endpoint's) never runs the other one's code itself; ``still()`` is
    asked again then, so a greenlet that has moved on to other work meanwhile is left alone.
    None outside gevent.
    """
    if not _gevent_patched():
        return None
    import gevent

    target = gevent.getcurrent()
    hub = gevent.get_hub()

    def interrupt(error: BaseException, still: Callable[[], bool]) -> None:
        def throw() -> None:
            if not target.dead and still():
                target.throw(error)

        hub.loop.run_callback(throw)

    return interrupt


def watch_client(environ: dict[str, Any]) -> ClientWatch:
    """Start watching the request's client socket, when the server is gunicorn under gevent."""
    sock = environ.get("gunicorn.socket")
    if sock is None or not _gevent_patched():
        return ClientWatch(None)
    return ClientWatch(sock)


def read_body_within(environ: dict[str, Any], read: Callable[[], bytes], seconds: float) -> bytes:
    """Return ``read()``; raise ``ClientTimeout`` if the client takes longer than ``seconds`` to send it.

    Raises ``MalformedBody`` when the server finds the body's framing broken, and
    ``ClientDisconnected`` when the client closes the connection before the end of its body.
    """
    sock = environ.get("gunicorn.socket")
    try:
        if sock is None or not _gevent_patched():
            return read()
        import gevent

        with gevent.Timeout(seconds, ClientTimeout):
            return read()
    except Exception as exc:
        mapped = _body_error(exc)
        if mapped is exc:
            raise
        raise mapped from exc


def _body_error(exc: Exception) -> Exception:
    # gunicorn reads the body as the app asks and raises its own parse errors; after one it closes the
    # connection (its Body.failed), since where the next request would start is unknown.
    try:
        from gunicorn.http.errors import NoMoreData, ParseException
    except ImportError:
        return exc
    if isinstance(exc, NoMoreData):
        return ClientDisconnected()
    if isinstance(exc, ParseException):
        return MalformedBody((str(exc) or type(exc).__name__)[:100])
    return exc


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("socket")
