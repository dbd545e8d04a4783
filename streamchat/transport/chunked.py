"""Incremental decoding of HTTP/1.1 chunked transfer coding (RFC 9112, section 7.1).

The streaming hot path reads the upstream socket itself and decodes the
chunk framing here, so one network read that holds many SSE events costs
one pass instead of one trip through ``http.client`` and ``urllib3`` per
chunk. Pure: no I/O.
"""

from __future__ import annotations


class ChunkedFramingError(ValueError):
    """The bytes are not valid chunked transfer coding."""


class ChunkedDecoder:
    """``feed()`` raw body bytes as they arrive; get the payload back; ``done`` after the last chunk."""

    __slots__ = ("_buffer", "_remaining", "done")

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining = 0  # payload bytes of the current chunk still to come; -2: its CRLF
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Return the payload carried by ``data`` (and by what earlier reads left incomplete)."""
        buffer = self._buffer + data if self._buffer else data
        pieces = []
        position = 0
        size = len(buffer)
        while position < size and not self.done:
            if self._remaining == -2:
                if size - position < 2:
                    break
                if buffer[position:position + 2] != b"\r\n":
                    raise ChunkedFramingError("chunk data not followed by CRLF")
                position += 2
                self._remaining = 0
                continue
            if self._remaining > 0:
                take = min(self._remaining, size - position)
                pieces.append(buffer[position:position + take])
                position += take
                self._remaining -= take
                if self._remaining:
                    break
                self._remaining = -2  # the CRLF after the chunk data
                continue
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                if size - position > 1024:
                    raise ChunkedFramingError("chunk size line too long")
                break
            chunk_size = _chunk_size(buffer[position:line_end])
            if chunk_size < 0:
                raise ChunkedFramingError("negative chunk size")
            if chunk_size == 0:
                # The last chunk, then optional trailer fields, then an empty line.
                end = buffer.find(b"\r\n\r\n", line_end)
                if end < 0:
                    break  # keep "0\r\n..." buffered until the section is complete
                self.done = True
                position = end + 4
                break
            data_end = line_end + 2 + chunk_size
            if data_end + 2 <= size:  # the whole chunk is here (the usual case): take it in one step
                if buffer[data_end:data_end + 2] != b"\r\n":
                    raise ChunkedFramingError("chunk data not followed by CRLF")
                pieces.append(buffer[line_end + 2:data_end])
                position = data_end + 2
                continue
            position = line_end + 2
            self._remaining = chunk_size
        self._buffer = buffer[position:] if not self.done else b""
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)


def _chunk_size(line: bytes) -> int:
    """Parse a chunk-size line; chunk extensions (``;name=value``) are ignored."""
    try:
        return int(line, 16)
    except ValueError:
        pass
    field = line.split(b";", 1)[0].strip()
    try:
        return int(field, 16)
    except ValueError:
        raise ChunkedFramingError(f"bad chunk size {field[:20]!r}") from None
