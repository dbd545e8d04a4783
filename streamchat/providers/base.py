"""What every provider shares: the HTTP call, error mapping and the timed read loop.

A provider subclass declares its ``name``, the environment variables it reads
and its default model, and implements three small methods: ``build_request``
(URL, headers, JSON body), ``parse_event`` (one SSE event to text) and
``parse_json_body`` (for a proxy that ignored ``"stream": true``).
``Provider.stream()`` is the one generator the rest of the app uses.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Mapping

import requests
import urllib3.exceptions

from ..errors import (
    BadStream,
    ProviderError,
    ProviderRejected,
    RateLimited,
    UpstreamServerError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from ..chunked import ChunkedDecoder, ChunkedFramingError
from ..sse import ServerSentEvent, SSEDecoder
from .pool import POOL_CLASSES
from .socket_reader import socket_reader, turn_passer

READ_SIZE = 65536
ERROR_BODY_LIMIT = 65536
JSON_BODY_LIMIT = 4 * 1024 * 1024
USER_AGENT = "streamchat/1.0"


class EndOfStream(Exception):
    """The provider's own end marker (``[DONE]``, ``message_stop``) arrived."""


@dataclass(frozen=True)
class Timeouts:
    connect: float
    first_token: float
    idle: float
    max_duration: float


def new_session(pool_size: int, base_url: str) -> requests.Session:
    """Return a session that keeps up to ``pool_size`` connections per host open for reuse.

    The environment's proxy settings (``HTTPS_PROXY``, ``NO_PROXY``...) and CA
    bundle (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) are resolved for
    ``base_url`` once, here: ``Provider.stream`` sends through the session's
    adapter, which reads them from the session.
    """
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    adapter.poolmanager.pool_classes_by_scheme = POOL_CLASSES
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.proxies = requests.utils.get_environ_proxies(base_url)
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    session.trust_env = False
    return session


@functools.lru_cache(maxsize=16)
def _prepared_head(url: str, headers: tuple[tuple[str, str], ...]) -> requests.PreparedRequest:
    # A provider's URL and headers never change: parse and check them once (see Provider._send).
    request = requests.PreparedRequest()
    request.prepare_method("POST")
    request.prepare_url(url, None)
    request.prepare_headers(dict(headers))
    return request


def json_body(body: dict[str, Any]) -> bytes:
    """Return ``body`` as compact UTF-8 JSON, as the providers' own SDKs send it (httpx).

    ``requests``' ``json=`` escapes every non-ASCII character as ``\\uXXXX``: six
    bytes for a character that UTF-8 sends in two or three, on every request of
    a conversation in French, Russian or Japanese.
    """
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


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


def error_for_status(provider: str, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
    """Return the error that an HTTP error status from the provider means."""
    detail = _error_message(body) or f"HTTP {status}"
    message = f"{provider} answered {status}: {detail}"
    if status == 429:
        return RateLimited(message, provider=provider, status=status, retry_after=parse_retry_after(headers))
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


class Provider:
    """One upstream chat API; ``stream()`` yields the reply's text."""

    name: ClassVar[str]
    key_env_var: ClassVar[str]
    base_url_env_var: ClassVar[str]
    model_env_var: ClassVar[str]
    default_model: ClassVar[str]

    def __init__(self, *, model: str, base_url: str, api_key: str, session: requests.Session,
                 timeouts: Timeouts, max_tokens: int, temperature: float | None, system_prompt: str):
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.session = session
        self.timeouts = timeouts
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.system_prompt = system_prompt

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model} at {self.base_url}>"

    # -- what a subclass implements ---------------------------------------------------------

    def build_request(self, messages: list[dict[str, str]]) -> tuple[str, dict[str, str], dict[str, Any]]:
        raise NotImplementedError

    def parse_event(self, event: ServerSentEvent) -> str:
        """Return the text in ``event`` ("" for none); raise EndOfStream or a ProviderError."""
        raise NotImplementedError

    def parse_json_body(self, payload: Any) -> str:
        raise NotImplementedError

    # -- the generator ------------------------------------------------------------------------

    def stream(self, messages: list[dict[str, str]]) -> Iterator[str]:
        """Yield the reply's text: one string per upstream read, joining every delta it held.

        Raises a ``ProviderError`` for any failure, including no text before the
        first-token deadline, silence longer than the idle timeout, or a reply
        longer than the maximum duration. Always closes the upstream response.
        """
        started = time.monotonic()
        with translate_errors(self.name):
            response = self._send(*self.build_request(messages))
        del messages  # a long conversation must not stay in memory while the reply streams
        try:
            with translate_errors(self.name):
                if response.status_code != 200:
                    raise error_for_status(self.name, response.status_code, response.headers,
                                           response.raw.read(ERROR_BODY_LIMIT))
                content_type = response.headers.get("content-type", "")
                if content_type.startswith("application/json"):
                    yield self._json_reply(response)
                else:
                    yield from self._read_events(response, started)
        finally:
            response.close()

    def _send(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> requests.Response:
        """POST ``body`` as JSON and return the response once its headers are in; the body is left to read.

        This is ``session.post(url, data=json_body(body), stream=True)`` without the
        work that would be done again on every call for nothing (a fifth of a chat
        request's CPU): merging the environment, re-parsing the constant URL and
        headers, and the session's cookie jar. No cookies are kept or sent, so one
        user's upstream cookies never ride on another user's request.
        """
        request = _prepared_head(url, tuple({"Accept": "text/event-stream", "Accept-Encoding": "identity",
                                             "Content-Type": "application/json", "User-Agent": USER_AGENT,
                                             **headers}.items())).copy()
        request.prepare_body(data=json_body(body), files=None)
        session = self.session
        response = session.get_adapter(url).send(request, stream=True, timeout=(self.timeouts.connect,
                                                 self.timeouts.first_token), verify=session.verify,
                                                 cert=session.cert, proxies=session.proxies)
        request.body = None  # sent: the response keeps its request, but not the conversation for the whole reply
        return response

    def _read_events(self, response: requests.Response, started: float) -> Iterator[str]:
        timeouts = self.timeouts
        first_text_deadline = started + timeouts.first_token
        end = started + timeouts.max_duration
        body = ChunkedBody.of(response)
        read = body.read if body is not None else self._raw_reader(response)
        decoder = SSEDecoder()
        seen_text = False
        ended = False
        try:
            while not ended:
                # Each read is bounded by whichever deadline comes first,
                # so keep-alive comments cannot stretch the wait for the first text.
                now = time.monotonic()
                timeout = min(timeouts.idle, end - now) if seen_text else min(first_text_deadline, end) - now
                if timeout <= 0:
                    what = "maximum duration" if seen_text else "first-token deadline"
                    raise UpstreamTimeout(f"{self.name} reached the {what}", provider=self.name)
                chunk = read(timeout)
                if chunk:
                    events = decoder.feed(chunk)
                    if not events:
                        continue
                else:
                    events, ended = decoder.finish(), True  # the stream ended without its end marker
                text, saw_end = self._text_of(events)
                if text:
                    seen_text = True
                    yield text  # every delta of this read in one write
                if saw_end:
                    self._drain(read)
                    ended = True
        finally:
            if body is not None:
                body.close()
        if not seen_text:
            raise BadStream(f"{self.name} stream ended before any text", provider=self.name)

    @staticmethod
    def _raw_reader(response: requests.Response) -> Callable[[float], bytes]:
        # Not a plain chunked body (HTTP/1.0, content-encoded...): let urllib3 decode it.
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

    def _text_of(self, events: list[ServerSentEvent]) -> tuple[str, bool]:
        """Return the text of ``events`` joined, and whether the end marker was among them."""
        parse = self.parse_event
        pieces = []
        for event in events:
            try:
                text = parse(event)
            except EndOfStream:
                return "".join(pieces), True
            if text:
                pieces.append(text)
        return "".join(pieces), False

    def _drain(self, read: Callable[[float], bytes]) -> None:
        # Read the few bytes after the end marker so the connection returns to the pool.
        with contextlib.suppress(Exception):
            while read(min(1.0, self.timeouts.idle)):
                pass

    def _json_reply(self, response: requests.Response) -> str:
        body = response.raw.read(JSON_BODY_LIMIT)
        try:
            text = self.parse_json_body(json.loads(body))
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as exc:
            raise BadStream(f"{self.name} sent JSON that is not a reply: {exc}", provider=self.name) from exc
        if not text:
            raise BadStream(f"{self.name} sent a reply with no text", provider=self.name)
        return text


#: The C scanner behind ``json.loads``: half of what ``json.loads`` costs on a short event is its Python wrapping.
_scan_json = json.JSONDecoder().scan_once


def load_json_event(provider: str, data: str) -> Any:
    """Parse an event's JSON data, raising BadStream when it is not JSON."""
    try:
        value, end = _scan_json(data, 0)
        if end == len(data):
            return value
    except (StopIteration, ValueError, RecursionError):
        pass
    try:
        return json.loads(data)  # whitespace around the value, extra data, or no JSON at all: json.loads decides
    except (ValueError, RecursionError):
        raise BadStream(f"{provider} sent an event that is not JSON: {data[:80]!r}", provider=provider) from None


def in_stream_error(provider: str, error: Any) -> ProviderError:
    """Return the error that an error object inside a 200 stream stands for."""
    if isinstance(error, dict):
        kind = str(error.get("type") or "")
        code = str(error.get("code") or "")
        message = str(error.get("message") or kind or code or error)[:300]
    else:
        kind = code = ""
        message = str(error)[:300]
    if "rate_limit" in kind or code in ("429", "rate_limit_exceeded"):
        return RateLimited(f"{provider} stream error: {message}", provider=provider)
    return UpstreamServerError(f"{provider} stream error: {message}", provider=provider)
