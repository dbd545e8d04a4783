"""How upstream failures become the ``streamchat.errors`` tree.

Three ways a provider fails, each mapped here and nowhere else: exceptions of
``requests``, ``urllib3`` and sockets (``translate_errors``), an HTTP error
status (``error_for_status``, with ``parse_retry_after``), and an error object
inside a 200 stream (``in_stream_error``).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import time
from typing import Any, Iterator, Mapping

import requests
import urllib3.exceptions

from .chunked import ChunkedFramingError
from .rate_limits import exhausted_for
from ..errors import (
    BadStream,
    ProviderError,
    ProviderRejected,
    RateLimited,
    UpstreamServerError,
    UpstreamTimeout,
    UpstreamUnreachable,
)


@contextlib.contextmanager
def translate_errors(provider: str) -> Iterator[None]:
    """Map ``requests``, ``urllib3`` and socket exceptions to the ``streamchat.errors`` tree."""
    try:
        yield
    except ProviderError:
        raise
    except ChunkedFramingError as exc:
        raise BadStream(f"broken chunked framing: {exc}", provider=provider) from exc
    except (requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError) as exc:
        raise UpstreamTimeout(f"connect timed out: {exc}", provider=provider) from exc
    except (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError) as exc:
        raise UpstreamTimeout(f"read timed out: {exc}", provider=provider) from exc
    except (requests.exceptions.ConnectionError, urllib3.exceptions.ProtocolError,
            urllib3.exceptions.HTTPError, requests.exceptions.ChunkedEncodingError, OSError) as exc:
        raise UpstreamUnreachable(f"connection failed: {exc}", provider=provider) from exc
    except requests.exceptions.RequestException as exc:
        raise UpstreamUnreachable(f"request failed: {exc}", provider=provider) from exc


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Return the seconds a 429 asks us to wait (``retry-after-ms``, or ``retry-after`` seconds or date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        with contextlib.suppress(ValueError):
            return max(0.0, float(millis) / 1000)
    value = headers.get("retry-after")
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError, IndexError):
        when = email.utils.parsedate_to_datetime(value).timestamp()
        return max(0.0, when - (time.time() if now is None else now))
    return None


def is_read_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is a read that waited its whole timeout without data (the body's state is intact)."""
    return isinstance(exc, (TimeoutError, urllib3.exceptions.ReadTimeoutError, requests.exceptions.ReadTimeout))


def error_for_status(provider: str, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
    """Return the error that an HTTP error status from the provider means."""
    detail = _error_message(body) or f"HTTP {status}"
    message = f"{provider} answered {status}: {detail}"
    if status == 429:
        # Retry-After, else the reset of the limit the rate-limit headers say is spent (OpenAI sends no Retry-After).
        wait = parse_retry_after(headers)
        return RateLimited(message, provider=provider, status=status,
                           retry_after=wait if wait is not None else exhausted_for(headers))
    if status in (408, 504):
        return UpstreamTimeout(message, provider=provider, status=status)
    if status >= 500:
        return UpstreamServerError(message, provider=provider, status=status)
    return ProviderRejected(message, provider=provider, status=status)


def _error_message(body: bytes) -> str:
    try:
        payload = json.loads(body)
        error = payload.get("error", payload)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("type") or "")[:300]
        return str(error)[:300]
    except (ValueError, AttributeError, RecursionError):
        return body[:200].decode("utf-8", "replace").strip()


#: In-stream error types that say the provider cannot answer now, for anyone (both protocols' documented
#: types: OpenAI's and its compatibles' ``error.type``/``code``, Anthropic's ``error.type``).
AVAILABILITY_TYPES = {"overloaded_error", "overloaded", "api_error", "server_error", "internal_server_error",
                      "internal_error", "service_unavailable", "service_unavailable_error", "timeout_error",
                      "timeout", "rate_limit_error", "rate_limit_exceeded", "insufficient_quota", "billing_error"}
#: In-stream error types that are about this request or its key: the next request may well succeed.
AUTH_TYPES = {"authentication_error", "invalid_api_key", "permission_error", "permission_denied"}


def in_stream_error(provider: str, error: Any) -> ProviderError:
    """Return the error that an error object inside a 200 stream stands for.

    Only an availability error (overloaded, rate-limited, a server or API error,
    a timeout) is a ``ProviderUnavailable`` that cools the provider down for
    everyone. One about this request (``invalid_request_error``, a context or
    token limit, a tool-use error, a 4xx ``code``) or its key is a
    ``ProviderRejected``: it costs this request its live answer, no one else's.
    An error with no type or code says nothing about its cause: the request's own.
    """
    if isinstance(error, dict):
        kind = str(error.get("type") or "").lower()
        raw_code = error.get("code") if error.get("code") is not None else error.get("status")
        code = str(raw_code if raw_code is not None else "").lower()
        message = str(error.get("message") or kind or code or error)[:300]
    else:
        kind = code = ""
        message = str(error)[:300]
    text = f"{provider} stream error: {message}"
    status = int(code) if code.isdigit() else None
    if "rate_limit" in kind or "rate_limit" in code or status == 429:
        return RateLimited(text, provider=provider, status=status)
    if kind in ("timeout_error", "timeout") or code == "timeout" or status in (408, 504):
        return UpstreamTimeout(text, provider=provider, status=status)
    if kind in AUTH_TYPES or code in AUTH_TYPES or status in (401, 403):
        return ProviderRejected(text, provider=provider, status=status if status in (401, 403) else 401)
    if (status is not None and status >= 500) or kind in AVAILABILITY_TYPES or code in AVAILABILITY_TYPES:
        return UpstreamServerError(text, provider=provider, status=status)
    return ProviderRejected(text, provider=provider, status=status if status is not None and status < 500 else 400)
