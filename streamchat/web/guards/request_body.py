"""Read a request's body within a deadline, as the client's fault when it is slow, malformed or too large."""

from __future__ import annotations

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from ...domain.validation import InvalidRequest
from ...server.disconnect import ClientTimeout, MalformedBody, read_body_within


def request_body_within(seconds: float) -> bytes:
    """Return the request's body, read within ``seconds`` (408 after), its framing checked (400), its size too (413)."""
    try:
        return read_body_within(request.environ, _request_body, seconds)
    except ClientTimeout:
        raise InvalidRequest(408, "request_timeout", f"The request body did not arrive within {seconds:g} s.") from None
    except MalformedBody as exc:
        raise InvalidRequest(400, "invalid_body_framing",
                             f"The request body's chunked framing is broken ({exc}).") from None


def _request_body() -> bytes:
    body = request.get_data(cache=False)
    # A chunked body has no Content-Length: werkzeug stops reading it at MAX_CONTENT_LENGTH without a word,
    # and the cut JSON would be reported as malformed. One more byte on the wire means it was too large.
    if request.content_length is None and len(body) >= current_app.config["MAX_CONTENT_LENGTH"]:
        if request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    return body

