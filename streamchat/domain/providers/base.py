"""The provider contract, and the HTTP + Server-Sent Events loop the real providers share.

``Provider`` is the contract the relay uses: a ``name``, a ``model``, a
``base_url`` and one generator, ``stream(messages, options, usage)``, that
yields the reply's text and raises a ``streamchat.errors.ProviderError`` for any
failure. ``options`` are the request's own limits (``Options``: at most the
configured ``max_tokens``, a temperature); ``usage`` is filled in with the
tokens the upstream reports. While the upstream is silent after the first
text, the generator yields ``""`` every ``HEARTBEAT_EVERY`` seconds, so a wire
format that can say "still here" (an SSE comment) does; text/plain skips it.

``HTTPProvider`` implements it for an upstream chat API. A subclass points at
its ``ProviderFacts`` (``provider_facts``: its name, the environment variables it
reads, its default model and base URL, whether it may run without a key),
from which the settings and the configuration docs are generated. It implements three small methods: ``build_request``
(URL, headers, JSON body), ``parse_event`` (one SSE event to text, noting any
usage) and ``parse_json_body`` (for a proxy that ignored ``"stream": true``). How the
request is sent and the body read is ``streamchat.transport``'s business.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import requests

from ...errors import BadStream, ProviderError, UpstreamTimeout
from ...transport.body import ChunkedBody, raw_reader
from ...transport.failures import error_for_status, is_read_timeout, translate_errors
from ...transport.rate_limits import exhausted_for
from ...transport.session import send_json
from ..provider_facts import ProviderFacts
from ..sse import ServerSentEvent, SSEDecoder
from ..usage import Usage

ERROR_BODY_LIMIT = 65536
JSON_BODY_LIMIT = 4 * 1024 * 1024
#: Seconds of upstream silence after the first text between two ``""`` heartbeats (proxies time out at 30-60 s).
HEARTBEAT_EVERY = 15.0


class EndOfStream(Exception):
    """The provider's own end marker (``[DONE]``, ``message_stop``) arrived."""


@dataclass(frozen=True)
class Timeouts:
    connect: float
    first_token: float
    idle: float
    max_duration: float


@dataclass(frozen=True)
class Options:
    """One request's own wishes, within the configured limits."""

    max_tokens: int | None = None  # None: the configured LLM_MAX_TOKENS; never more than it
    temperature: float | None = None  # None: the configured LLM_TEMPERATURE (or the provider's default)


DEFAULT_OPTIONS = Options()


class Provider:
    """What the relay needs of an upstream: who it is, and ``stream()``."""

    name: ClassVar[str]
    model: str
    base_url: str

    #: Its keys (taken in turn: ``stream``'s ``key`` is a position among them), tier and weight (the routing).
    api_keys: tuple[str, ...] = ()
    tier: int = 1
    weight: float = 1.0

    def stream(self, messages: list[dict[str, str]], options: Options = DEFAULT_OPTIONS,
               usage: Usage | None = None, key: int = 0) -> Iterator[str]:
        """Yield the reply's text; raise a ``ProviderError`` for any failure, before or after the first text.

        Messages have the roles ``user``, ``assistant`` and (from authenticated API clients) ``system``;
        the configured system prompt goes first. The tokens the upstream reports go into ``usage``.
        """
        raise NotImplementedError


class HTTPProvider(Provider):
    """One upstream chat API spoken over HTTP with a Server-Sent Events body."""

    #: The API's name and settings (``provider_facts``): the settings table is generated from them.
    facts: ClassVar[ProviderFacts]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "facts" in cls.__dict__:
            cls.name = cls.facts.name  # the relay, the breaker and the logs know a provider by this name

    def __init__(self, *, model: str, base_url: str, api_keys: tuple[str, ...], session: requests.Session,
                 timeouts: Timeouts, max_tokens: int, temperature: float | None, system_prompt: str,
                 name: str | None = None, extra_headers: dict[str, str] | None = None, tier: int = 1,
                 weight: float = 1.0):
        if name is not None:
            self.name = name  # type: ignore[misc]  (a named upstream: its class's name otherwise)
        self.extra_headers = extra_headers or {}  # from the upstreams file: they win over the protocol's own
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_keys = api_keys  # taken in turn by the relay; none for a keyless local server
        self.tier = tier
        self.weight = weight
        self.session = session
        self.timeouts = timeouts
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.system_prompt = system_prompt

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model} at {self.base_url}>"

    # -- what a subclass implements ---------------------------------------------------------

    def build_request(self, messages: list[dict[str, str]], options: Options,
                      api_key: str) -> tuple[str, dict[str, str], dict[str, Any]]:
        """Return the URL, headers and JSON body of the request, sent with ``api_key`` ("" for none)."""
        raise NotImplementedError

    def parse_event(self, event: ServerSentEvent, usage: Usage) -> str:
        """Return the text in ``event`` ("" for none), noting reported tokens in ``usage``; raise EndOfStream
        or a ProviderError."""
        raise NotImplementedError

    def parse_json_body(self, payload: Any, usage: Usage) -> str:
        raise NotImplementedError

    def ask_again_without_extras(self, error: ProviderError) -> bool:
        """Whether ``error`` refused a field the request can go without: then leave it out from now on and say
        True, and the request is sent once more. By default nothing is optional."""
        return False

    def max_tokens_for(self, options: Options) -> int:
        """The reply's token limit: the request's, never above the configured one."""
        return min(options.max_tokens, self.max_tokens) if options.max_tokens else self.max_tokens

    def temperature_for(self, options: Options) -> float | None:
        return options.temperature if options.temperature is not None else self.temperature

    def _request(self, messages: list[dict[str, str]], options: Options,
                 api_key: str) -> tuple[str, dict[str, str], dict[str, Any]]:
        url, headers, body = self.build_request(messages, options, api_key)
        return url, ({**headers, **self.extra_headers} if self.extra_headers else headers), body

    # -- the generator ------------------------------------------------------------------------

    def stream(self, messages: list[dict[str, str]], options: Options = DEFAULT_OPTIONS,
               usage: Usage | None = None, key: int = 0) -> Iterator[str]:
        """Yield the reply's text: one string per upstream read, joining every delta it held; sent with key ``key``.

        Raises a ``ProviderError`` for any failure, including no text before the
        first-token deadline, silence longer than the idle timeout, or a reply
        longer than the maximum duration. Always closes the upstream response.
        """
        started = time.monotonic()
        timeouts = self.timeouts
        usage = usage if usage is not None else Usage()
        with translate_errors(self.name):
            # Returned without its request: the conversation in its body is freed once sent.
            api_key = self.api_keys[key] if self.api_keys else ""
            response = send_json(self.session, *self._request(messages, options, api_key),
                                 timeout=(timeouts.connect, timeouts.first_token))
            if response.status_code != 200:
                error = error_for_status(self.name, response.status_code, response.headers,
                                         response.raw.read(ERROR_BODY_LIMIT))
                response.close()
                if not self.ask_again_without_extras(error):
                    raise error
                response = send_json(self.session, *self._request(messages, options, api_key),
                                     timeout=(timeouts.connect, timeouts.first_token))
        del messages  # a long conversation must not stay in memory while the reply streams
        body = None
        try:
            with translate_errors(self.name):
                if response.status_code != 200:
                    raise error_for_status(self.name, response.status_code, response.headers,
                                           response.raw.read(ERROR_BODY_LIMIT))
                usage.key_exhausted_for = exhausted_for(response.headers)
                if response.headers.get("content-type", "").startswith("application/json"):
                    yield self._json_reply(response, usage)
                    return
                # One generator for the whole read loop: every level would cost each chunk a frame switch.
                body = ChunkedBody.of(response)
                read = body.read if body is not None else raw_reader(response)
                first_text_deadline = started + timeouts.first_token
                end = started + timeouts.max_duration
                decoder = SSEDecoder()
                seen_text = False
                quiet_until = 0.0  # after the first text: the end of the silence tolerated (LLM_IDLE_TIMEOUT)
                while True:
                    # Each read is bounded by whichever deadline comes first,
                    # so keep-alive comments cannot stretch the wait for the first text.
                    now = time.monotonic()
                    if seen_text:
                        quiet_until = quiet_until or now + timeouts.idle
                        timeout = min(quiet_until, end) - now
                    else:
                        timeout = min(first_text_deadline, end) - now
                    if timeout <= 0:
                        what = "maximum duration" if seen_text else "first-token deadline"
                        raise UpstreamTimeout(f"{self.name} reached the {what}", provider=self.name)
                    try:
                        chunk = read(HEARTBEAT_EVERY if seen_text and timeout > HEARTBEAT_EVERY else timeout)
                    except Exception as exc:
                        if seen_text and timeout > HEARTBEAT_EVERY and is_read_timeout(exc):
                            yield ""  # silent, but within its idle time: a heartbeat
                            continue
                        raise
                    quiet_until = 0.0
                    if chunk:
                        events = decoder.feed(chunk)
                        if not events:
                            continue
                        text, ending = self._text_of(events, usage)
                    else:  # the body ended without the provider's end marker
                        text, ending = self._text_of(decoder.finish(), usage)
                        ending = ending or EndOfStream()
                    if text:
                        seen_text = True
                        yield text  # every delta of this read in one write, before whatever ended the stream
                    if ending is not None:
                        break
                if isinstance(ending, ProviderError):
                    raise ending
                if not seen_text:
                    raise BadStream(f"{self.name} stream ended before any text", provider=self.name)
                if chunk:
                    self._drain(read)
        finally:
            if body is not None:
                body.close()
            response.close()

    def _text_of(self, events: list[ServerSentEvent], usage: Usage) -> tuple[str, EndOfStream | ProviderError | None]:
        """Return the text of ``events`` up to whatever ended the stream among them, and that ending.

        The one place where events become text: whether the stream ends with its
        marker or with an error (an error event, JSON that is not an event), every
        delta parsed before it is returned first.
        """
        parse = self.parse_event
        pieces = []
        ending = None
        for event in events:
            try:
                text = parse(event, usage)
            except (EndOfStream, ProviderError) as exc:
                ending = exc
                break
            if text:
                pieces.append(text)
        return "".join(pieces), ending

    def _drain(self, read: Callable[[float], bytes]) -> None:
        # Read the few bytes after the end marker so the connection returns to the pool.
        with contextlib.suppress(Exception):
            while read(min(1.0, self.timeouts.idle)):
                pass

    def _json_reply(self, response: requests.Response, usage: Usage) -> str:
        body = response.raw.read(JSON_BODY_LIMIT)
        try:
            text = self.parse_json_body(json.loads(body), usage)
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
