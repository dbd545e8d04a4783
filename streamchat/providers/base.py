"""What every provider shares: the HTTP call and the timed read loop.

A provider subclass declares its ``name``, the environment variables it reads
and its default model, and implements three small methods: ``build_request``
(URL, headers, JSON body), ``parse_event`` (one SSE event to text) and
``parse_json_body`` (for a proxy that ignored ``"stream": true``).
``Provider.stream()`` is the one generator the rest of the app uses; how a
body is read is in ``body.py``, how failures are named in ``failures.py``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import requests

from ..errors import BadStream, UpstreamTimeout
from ..sse import ServerSentEvent, SSEDecoder
from .body import ChunkedBody, raw_reader
from .failures import error_for_status, translate_errors
from .pool import POOL_CLASSES

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


class StreamingAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, building each response without its cookies, a second copy of its headers or its request.

    ``build_response`` is the hook requests documents for subclasses. Its own parses the upstream's
    ``Set-Cookie`` headers into the response's jar, copies every header into a new dict and keeps the
    request sent, and an open stream keeps all three to its end: with OpenAI's ~25 response headers, 500
    streams took 6 KB more each, and the request (its headers) another 1.2 KB (measured). urllib3's headers
    are already case-insensitive, upstream cookies are never used (``_send``), and nothing reads
    ``response.request``. (``requests.Response()`` still makes its empty jar: 1.1 KB and 2.5 us.)
    """

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = resp.status
        response.reason = resp.reason
        response.headers = resp.headers
        response.raw = resp
        response.url = req.url
        response.connection = self
        return response


def new_session(pool_size: int, base_url: str) -> requests.Session:
    """Return a session that keeps up to ``pool_size`` connections per host open for reuse.

    The environment's proxy settings (``HTTPS_PROXY``, ``NO_PROXY``...) and CA
    bundle (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) are resolved for
    ``base_url`` once, here: ``Provider.stream`` sends through the session's
    adapter, which reads them from the session.
    """
    session = requests.Session()
    adapter = StreamingAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
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
        return response  # without its request: the conversation in its body is freed once sent

    def _read_events(self, response: requests.Response, started: float) -> Iterator[str]:
        timeouts = self.timeouts
        first_text_deadline = started + timeouts.first_token
        end = started + timeouts.max_duration
        body = ChunkedBody.of(response)
        read = body.read if body is not None else raw_reader(response)
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

