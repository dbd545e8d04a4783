"""Read a streaming response body one network read at a time, with a deadline on every read.

``ChunkedBody`` decodes a plain chunked body straight from the connection's
socket; ``raw_reader`` reads any other body (close-delimited, gzip or deflate)
through urllib3, which undoes the content coding. Either is a
``read(timeout) -> bytes`` that returns b"" at the end of the body.
"""

from __future__ import annotations

from typing import Any, Callable

import requests

from .chunked import ChunkedDecoder
from ..errors import UpstreamUnreachable
from .socket_reader import socket_reader, turn_passer

READ_SIZE = 65536


class ChunkedBody:
    """Read a chunked body straight from the connection's socket, one network read at a time.

    ``urllib3`` and ``http.client`` would cost a trip through several layers for
    every HTTP chunk, and streams send one chunk per event; here one read decodes
    every chunk it holds. At the end the connection goes back to the pool.
    """

    def __init__(self, response: requests.Response, fp: Any, sock: Any):
        self.response = response
        self.decoder = ChunkedDecoder()
        # First the bytes http.client buffered while parsing the headers (read1 of more than the
        # buffer's size returns them all), then the socket itself, one layer closer to the network.
        self._buffered = fp
        self._sock = sock
        self._reader = socket_reader(sock)

    @classmethod
    def of(cls, response: requests.Response) -> "ChunkedBody | None":
        """Return a reader for ``response``, or None when it is not a plain chunked body we can read."""
        raw_response = getattr(response.raw, "_fp", None)  # http.client.HTTPResponse
        fp = getattr(raw_response, "fp", None)
        sock = _socket_of(response)
        if (fp is None or sock is None or not getattr(raw_response, "chunked", False)
                or raw_response.chunk_left is not None
                or response.headers.get("content-encoding", "identity").lower() != "identity"):
            return None
        return cls(response, fp, sock)

    def read(self, timeout: float) -> bytes:
        """Return the next payload bytes, waiting ``timeout`` seconds at most; b"" after the last chunk."""
        decoder = self.decoder
        while not decoder.done:
            if self._buffered is not None:
                self._sock.settimeout(timeout)
                data, self._buffered = self._buffered.read1(READ_SIZE), None
                if not self.response.raw._fp.will_close:
                    # Free its read buffer: from here on we read the socket. Not when the upstream closes
                    # after this response: http.client has let go of the socket, and closing its reader
                    # would close the socket under us.
                    self.response.raw._fp._close_conn()
            else:
                data = self._reader.recv(READ_SIZE, timeout)
            if not data:
                raise UpstreamUnreachable("the upstream closed the connection in the middle of the body")
            payload = decoder.feed(data)
            if decoder.done:
                self._release()
            if payload:
                return payload
        return b""

    def close(self) -> None:
        """Stop watching the socket; call before the connection is closed or reused."""
        self._reader.close()

    def _release(self) -> None:
        # Tell http.client the body is over, then hand the connection back to urllib3's pool.
        self.close()
        self.response.raw._fp.chunk_left = None
        self.response.raw.release_conn()


def _socket_of(response: requests.Response) -> Any:
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is None:  # http.client lets go of a connection that closes after this response: ask its reader
        reader = getattr(getattr(response.raw, "_fp", None), "fp", None)  # BufferedReader over a SocketIO
        sock = getattr(getattr(reader, "raw", None), "_sock", None)
    return sock


def raw_reader(response: requests.Response) -> Callable[[float], bytes]:
    """Return ``read(timeout)`` for a body that is not plain chunked (HTTP/1.0, gzip...), decoded by urllib3."""
    sock = _socket_of(response)
    pass_turn = turn_passer(sock)

    def read(timeout: float) -> bytes:
        if sock is not None:
            sock.settimeout(timeout)
        # requests leaves decoding to its own iterators: ask urllib3 to undo gzip/deflate here.
        data = response.raw.read1(READ_SIZE, decode_content=True)
        pass_turn()  # data that was waiting came without a switch: let the other streams run
        return data
    return read
