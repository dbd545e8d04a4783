"""Every error answer is JSON, built by ``error_response()``: ``{"error": {"code", "message"}}``, and on the
OpenAI-compatible ``/v1/`` routes OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging
import re

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from ..domain.validation import InvalidRequest
from ..errors import ClientDisconnected
from .guards.limits import rate_limit_message
from .service import service

log = logging.getLogger("streamchat")


#: OpenAI's error ``type`` for a status; the SDKs pick their exception class by the status alone.
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                429: "rate_limit_error"}


def error_response(status: int, code: str, message: str, headers=None, param: str | None = None) -> Response:
    """Return the JSON error answer with ``status``, a stable ``code`` for programs and a sentence for people."""
    if request.path.startswith("/v1/"):
        kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        response = jsonify({"error": {"message": message, "type": kind, "param": param, "code": code}})
    else:
        response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def init_app(app: Flask) -> None:
    """Answer every error, expected or not, with ``error_response()``."""
    app.register_error_handler(InvalidRequest, _invalid_request)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ClientDisconnected, _client_gone)
    app.register_error_handler(Exception, _unexpected_error)


def _invalid_request(error: InvalidRequest) -> Response:
    return error_response(error.status, error.code, error.message, param=error.param)


def _http_error(error: HTTPException) -> Response:
    code = re.sub(r"[^a-z0-9]+", "_", (error.name or "error").lower()).strip("_")
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    message = error.description or error.name
    if error.code == 413:
        message = f"The request body is larger than {service().settings.chat_max_body_bytes} bytes."
    elif error.code == 429:
        code, message, headers["Retry-After"] = rate_limit_message(error)
    return error_response(error.code or 500, code, message, headers)


def _client_gone(error: ClientDisconnected) -> Response:
    return error_response(499, "client_closed_request", "The client closed the connection.")


def _unexpected_error(error: Exception) -> Response:
    log.exception("unexpected error")
    return error_response(500, "internal_error", "Something went wrong on our side; the error was logged.")
