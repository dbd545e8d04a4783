"""Choose who answers, before the first byte, then stream the answer as text.

``Relay.open()`` walks the provider chain: it skips providers the circuit
breaker is cooling down, starts each remaining one and waits (under the
provider's first-token deadline) for its first text. The first provider to
produce text answers ``live``; if none does, the rules responder answers in
``fallback`` mode with the reason of the first failure. Either way the
caller gets a ``Reply`` whose mode is final (so its headers can be sent),
whose ``text()`` yields the reply as ``str``, and whose ``record`` says, once
it ends, how: ``complete``, ``cut_short`` (with ``cut_reason``),
``client_gone`` or ``stopped``. Turning text and ending into bytes (the cut-short notice
included) is the web layer's job, one framer per wire format.

When a reply closes, its final ``ReplyRecord`` goes to every function in
``Relay.listeners`` (the access log, metrics): one hook for every way a reply
ends.

A reply others follow (the reply cache's identical questions in flight) has a
``Tap``: it sees every piece of text and the ending, and a reply whose own
client leaves or stops while someone still follows it is carried on to its end
in the background rather than closed.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from typing import Any, Callable, Iterator, Protocol

from ..errors import ClientDisconnected, HedgeLost, ProviderError, RateLimited, ReplyStopped, ServiceRestarting
from ..redaction import url_without_secrets
from .breaker import CircuitBreaker
from .providers import Provider
from .providers.base import DEFAULT_OPTIONS, Options
from .record import (CLIENT_GONE, COMPLETE, COOLING_DOWN, CUT_SHORT, INTERNAL_ERROR, OPEN, RESTARTING,
                     STOPPED, ReplyRecord)
from .hedging import Attempt, Interrupter
from .routing import KEY_REJECTED_COOLDOWN, Router, key_name
from .usage import Usage, estimate_tokens

log = logging.getLogger("streamchat")

FALLBACK_WORDS_PER_CHUNK = 3
RATE_LIMITED, AUTH_REJECTED = RateLimited.reason, "auth_rejected"


class Responder(Protocol):
    """What answers when no model does: the rules (``streamchat.domain.rules.RulesStore``)."""

    def reply(self, messages: list[dict[str, str]]) -> tuple[str, str]:
        """Return ``(rule name, reply text)`` for the conversation."""

    def health(self) -> dict[str, Any]:
        """Return what ``/healthz`` shows of the responder: ``"loaded"`` false if it has no rules at all, a
        non-empty ``"error"`` when it needs attention."""


#: Seconds between looks, while a reply is carried on for its followers, at whether anyone still follows.
FOLLOWERS_CHECK = 0.5


class Tap(Protocol):
    """What a reply others follow hands its text to (``web.answers.AnswerTap``)."""

    def piece(self, text: str) -> None:
        """Take one piece of text, as it is handed out."""

    def followed(self) -> bool:
        """Whether anyone besides the reply's own client still follows it."""

    def ended(self, record: ReplyRecord, usage: Usage | None) -> None:
        """Take the reply's ending: ``record.ended`` says how (``open``: it was closed before its end)."""


class OpenStreams:
    """How many replies are streaming now in this process (for /healthz, metrics and leak checks)."""

    def __init__(self) -> None:
        self.count = 0
        #: Called with the new count when a reply starts or stops streaming (twice a reply, never per chunk).
        self.observers: list[Callable[[int], None]] = []

    def change(self, by: int) -> None:
        self.count += by
        for observer in self.observers:
            observer(self.count)


class Reply:
    """A reply whose mode is decided; ``text()`` streams it, ``close()`` ends it however far it got."""

    __slots__ = ("record", "usage", "tap", "_first", "_rest", "_on_close", "_relay", "_texts", "_released",
                 "_closed")

    def __init__(self, record: ReplyRecord, first: str, rest: Iterator[str], on_close: Callable[[], None] | None,
                 relay: "Relay", usage: Usage | None = None):
        self.record = record
        self.usage = usage  # what the upstream reports, as it reports it (None in fallback)
        self.tap: Tap | None = None  # set before text() by a reply others follow
        self._first = first
        self._rest = rest
        self._on_close = on_close
        self._relay = relay
        self._texts: Iterator[str] | None = None
        self._released = False
        self._closed = False

    def text(self) -> Iterator[str]:
        """Return the reply's text as an iterator of ``str``; ``record.ended`` says how it ended."""
        self._texts = self._stream()
        return self._texts

    def _stream(self) -> Iterator[str]:
        record, tap = self.record, self.tap
        self._relay.open_streams.change(+1)
        try:
            record.first_byte_at = time.perf_counter()
            record.chunks, record.chars = 1, len(self._first)
            if tap is not None:
                tap.piece(self._first)
            yield self._first
            for text in self._rest:
                record.chunks += 1
                record.chars += len(text)
                if tap is not None:
                    tap.piece(text)
                yield text
            record.ended = COMPLETE
        except ProviderError as exc:
            record.ended, record.cut_reason = CUT_SHORT, exc.reason
            log.warning("stream cut short: %s", exc)
        except ClientDisconnected:
            record.ended = CLIENT_GONE
        except ReplyStopped:
            record.ended = STOPPED
        except ServiceRestarting:
            record.ended, record.cut_reason = CUT_SHORT, RESTARTING
        except Exception:  # a bug, not the user's fault: end the reply as for a provider failure
            record.ended, record.cut_reason = CUT_SHORT, INTERNAL_ERROR
            log.exception("stream cut short by an unexpected error")
        finally:
            self._relay.open_streams.change(-1)
            self._release()
            if tap is not None:
                tap.ended(record, self.usage)

    def _release(self) -> None:
        # Close the upstream at once, and run the caller's callback (the client watch stops).
        if self._released:
            return
        self._released = True
        try:
            close = getattr(self._rest, "close", None)
            if close is not None:
                close()
        finally:
            if self._on_close is not None:
                self._on_close()

    def close(self) -> None:
        """End the reply wherever it is (a client that left ends it here) and hand its record to the listeners.

        A reply someone else still follows is not ended: it is carried on in the background, and ends when
        its text does or nobody follows any more.
        """
        if self._closed:
            return
        self._closed = True
        if self._texts is not None and self.record.ended == OPEN and self.tap is not None and self.tap.followed():
            threading.Thread(target=self._carry_on, name="reply-followed", daemon=True).start()
            return
        self._end()

    def _carry_on(self) -> None:
        next_look = time.monotonic() + FOLLOWERS_CHECK
        try:
            for _ in self._texts:  # the tap hands each piece to the followers
                if time.monotonic() >= next_look:
                    next_look = time.monotonic() + FOLLOWERS_CHECK
                    if not self.tap.followed():
                        log.info("nobody follows the reply any more: closing its upstream")
                        break
        except Exception:
            log.exception("a followed reply failed while carried on")
        finally:
            self._end()

    def _end(self) -> None:
        try:
            if self._texts is not None:
                self._texts.close()  # its finally closes the upstream
            self._release()  # a reply whose text was never asked for
        finally:
            record = self.record
            if record.ended == OPEN:
                record.ended = CLIENT_GONE
            record.ended_at = time.perf_counter()
            if record.mode == "live":
                self.count_tokens()
            for listener in self._relay.listeners:
                try:
                    listener(record)
                except Exception:  # a listener's bug must not break the others, nor the reply's end
                    log.exception("reply listener %r failed", listener)


    def count_tokens(self) -> None:
        """Set the record's tokens: the upstream's own count when it gave one, else estimated from what was
        sent and what came back (a reply that ended before its usage event settles on what it produced)."""
        record = self.record
        usage = self.usage or Usage()
        if usage.input_tokens is not None:
            record.input_tokens = usage.input_tokens
        else:
            record.tokens_estimated = True
        if usage.output_tokens is not None:
            record.output_tokens = usage.output_tokens
        else:
            record.output_tokens, record.tokens_estimated = estimate_tokens(record.chars), True


class Relay:
    """The provider chain, the circuit breaker and the rules responder behind it."""

    def __init__(self, chain: list[Provider], rules: Responder, breaker: CircuitBreaker,
                 fallback_delay: float = 0.0, hedge_after: float = 0.0, interrupter: Interrupter | None = None):
        self.open_streams = OpenStreams()
        self.chain = chain
        self.rules = rules
        self.breaker = breaker
        self.router = Router(chain, breaker)
        #: Seconds a candidate may stay silent before the next one starts beside it (0: never; ``hedging``).
        self.hedge_after = hedge_after
        self.interrupter = interrupter  # how a hedged pair's loser is closed at once (server.disconnect)
        self.fallback_delay = fallback_delay
        #: Called with each reply's final ``ReplyRecord`` when it closes.
        self.listeners: list[Callable[[ReplyRecord], None]] = []

    def open(self, messages: list[dict[str, str]], *, on_close: Callable[[], None] | None = None,
             live_denied: str | None = None, record: ReplyRecord | None = None,
             options: Options = DEFAULT_OPTIONS, prefer: str | None = None,
             may_hedge: Callable[[], bool] | None = None) -> Reply:
        """Return a reply from the first provider that produces text in time, else from the rules.

        ``on_close`` runs once the reply no longer streams (or if choosing raises).
        ``live_denied`` is a reason (such as ``"budget"``) to answer from the rules
        without trying any provider. ``record`` carries the caller's start time and tags.
        ``options`` go to the provider; ``prefer`` names a provider to try first. ``may_hedge`` is asked
        before a hedge starts (it reserves the hedge's tokens, and says False when they do not fit).
        """
        try:
            return self._open(messages, on_close, live_denied, record or ReplyRecord(), options, prefer, may_hedge)
        except BaseException:
            if on_close is not None:
                on_close()  # no reply will run it
            raise

    def _open(self, messages, on_close, live_denied, record: ReplyRecord, options: Options,
              prefer: str | None, may_hedge: Callable[[], bool] | None) -> Reply:
        reasons: list[str] = []  # why each candidate did not answer, in the order they were tried
        if live_denied is None:
            candidates = self._candidates(prefer, record, reasons)
            if self.hedge_after > 0:
                reply = self._first_of_hedged(candidates, messages, options, record, reasons, on_close, may_hedge)
            else:
                reply = self._first_of(candidates, messages, options, record, reasons, on_close)
            if reply is not None:
                return reply
        # The first failure is the one the site owner configured first: report that one.
        record.mode, record.provider = "fallback", "rules"
        record.reason = reasons[0] if reasons else live_denied or "no_provider"
        record.rule, text = self.rules.reply(messages)
        pieces = word_groups(text, FALLBACK_WORDS_PER_CHUNK, self.fallback_delay)
        return Reply(record, next(pieces, ""), pieces, on_close, self)

    def _candidates(self, prefer: str | None, record: ReplyRecord,
                    reasons: list[str]) -> Iterator[tuple[Provider, int]]:
        """Yield (upstream, key position) in the order the router gives, noting the ones skipped and why."""
        for upstream in self.router.upstreams(prefer):
            skip = self.breaker.skip_reason(upstream.name)
            if skip:
                reasons.append(skip)
                record.failures.append((upstream.name, COOLING_DOWN))
                continue
            keys = self.router.keys(upstream)
            if not keys:  # every key is rate-limited or refused: say why the first one is
                reasons.append(self.breaker.skip_reason(key_name(upstream.name, 0)) or RATE_LIMITED)
                record.failures.append((upstream.name, COOLING_DOWN))
                continue
            for key in keys:
                yield upstream, key
                if not self._next_key_may_answer(record, upstream):
                    break

    def _first_of(self, candidates, messages, options: Options, record: ReplyRecord, reasons: list[str],
                  on_close) -> Reply | None:
        """Ask each candidate in turn, in this greenlet, for its first text: the first reply, or None."""
        for upstream, key in candidates:
            usage = Usage()
            stream = upstream.stream(messages, options, usage, key)
            try:
                first, error = next(stream), None
            except ClientDisconnected:
                raise
            except Exception as exc:
                first, error = None, exc
            if self._noted(upstream, key, usage, error, record, reasons):
                return self._reply(upstream, first, stream, usage, messages, record, on_close)
        return None

    def _first_of_hedged(self, candidates, messages, options: Options, record: ReplyRecord, reasons: list[str],
                         on_close, may_hedge: Callable[[], bool] | None) -> Reply | None:
        """As ``_first_of``, but a candidate silent for ``hedge_after`` seconds gets the next one beside it."""
        finished: queue.SimpleQueue[Attempt] = queue.SimpleQueue()
        running: list[Attempt] = []
        put_back: list[tuple[Provider, int]] = []
        hedge_chance = True  # one hedge per reply at most

        def start(candidate: tuple[Provider, int]) -> Attempt:
            upstream, key = candidate
            usage = Usage()
            return Attempt(upstream, key, upstream.stream(messages, options, usage, key), usage, finished,
                           self.interrupter)

        try:
            while True:
                if not running:
                    candidate = put_back.pop() if put_back else next(candidates, None)
                    if candidate is None:
                        return None
                    running.append(start(candidate))
                try:
                    attempt = finished.get(timeout=self.hedge_after if hedge_chance and len(running) == 1 else None)
                except queue.Empty:  # the chosen upstream is slow: start the next candidate beside it
                    hedge_chance = False
                    candidate = next(candidates, None)
                    if candidate is not None and (may_hedge is None or may_hedge()):
                        running.append(start(candidate))
                        record.hedge = candidate[0].name
                    elif candidate is not None:
                        put_back.append(candidate)
                    continue
                running.remove(attempt)
                if self._noted(attempt.upstream, attempt.key, attempt.usage, attempt.error, record, reasons):
                    for other in running:
                        other.cancel()
                    record.hedge_won = bool(record.hedge) and attempt.upstream.name == record.hedge
                    return self._reply(attempt.upstream, attempt.first, attempt.stream, attempt.usage, messages,
                                       record, on_close)
        except BaseException:  # the client left while we waited: nobody reads either answer
            for other in running:
                other.cancel()
            raise

    def _noted(self, upstream: Provider, key: int, usage: Usage, error: BaseException | None, record: ReplyRecord,
               reasons: list[str]) -> bool:
        """Note how a candidate's wait for its first text ended; True when it produced text."""
        self._skip_if_spent(upstream, key, usage)
        if error is None:
            self.breaker.record(upstream.name, None)
            return True
        who = key_name(upstream.name, key) if len(upstream.api_keys) > 1 else upstream.name
        if isinstance(error, HedgeLost):
            return False  # the other one of the pair answered: nothing to note
        if isinstance(error, ProviderError):
            self._cool(upstream, key, error)
            reasons.append(error.reason)
            record.failures.append((who, error.reason))
            log.warning("%s failed before the first text: %s", who, error)
        elif isinstance(error, Exception):  # a bug in provider code costs this reply its live answer, never the user's
            reasons.append(INTERNAL_ERROR)
            record.failures.append((who, INTERNAL_ERROR))
            log.error("provider %s failed unexpectedly before the first text", upstream.name, exc_info=error)
        else:
            raise error  # GreenletExit, KeyboardInterrupt...: not the provider's to answer for
        return False

    def _reply(self, upstream: Provider, first, stream, usage: Usage, messages, record: ReplyRecord,
               on_close) -> Reply:
        record.provider, record.model = upstream.name, upstream.model
        # What was sent: the conversation and the provider's own system prompt (the reservation counts both).
        record.input_tokens = estimate_tokens(sum(len(message["content"]) for message in messages)
                                              + len(getattr(upstream, "system_prompt", "") or ""))
        return Reply(record, first, stream, on_close, self, usage)

    def _cool(self, upstream: Provider, key: int, error: ProviderError) -> None:
        """Cool what the error is about: the key for a 429 or a refused key, else the upstream itself."""
        keys = len(upstream.api_keys)
        if isinstance(error, RateLimited) and keys > 1:  # for its Retry-After, else LLM_COOLDOWN
            wait = error.retry_after if error.retry_after is not None else self.breaker.cooldown
            self.breaker.cool(key_name(upstream.name, key), wait, error.reason)
        elif error.reason == AUTH_REJECTED and keys:
            self.breaker.cool(key_name(upstream.name, key), KEY_REJECTED_COOLDOWN, error.reason)
            log.warning("%s refused key %d of %d (%s): it is skipped for %d minutes; check it",
                        upstream.name, key + 1, keys, error.status or "an error event", KEY_REJECTED_COOLDOWN // 60)
        else:
            self.breaker.record(upstream.name, error)

    def _skip_if_spent(self, upstream: Provider, key: int, usage: Usage) -> None:
        """Skip a key the upstream says has nothing left until its limit resets: avoid the 429, not suffer it."""
        if usage.key_exhausted_for:
            name = key_name(upstream.name, key) if upstream.api_keys else upstream.name
            self.breaker.cool(name, usage.key_exhausted_for, RATE_LIMITED)

    @staticmethod
    def _next_key_may_answer(record: ReplyRecord, upstream: Provider) -> bool:
        # A 429 or a refused key is about that key: the upstream's next key may answer at once. Anything
        # else (its own fault, or no answer yet because the next candidate is wanted beside it: a hedge)
        # goes on to the next upstream.
        if not record.failures:
            return False
        who, reason = record.failures[-1]
        return who.split("#", 1)[0] == upstream.name and reason in (RATE_LIMITED, AUTH_REJECTED)

    def health(self) -> dict[str, Any]:
        """Return what ``/healthz`` shows of the relay: providers, cool-downs, open streams, rules."""
        return {
            "providers": [self._upstream_health(p) for p in self.chain],
            "cooling_down": self.breaker.state(),
            "open_streams": self.open_streams.count,
            "rules": self.rules.health(),
        }


    def _upstream_health(self, upstream: Provider) -> dict[str, Any]:
        facts = getattr(type(upstream), "facts", None)
        cooling = self.router.cooling_keys(upstream)
        return {"name": upstream.name, "protocol": facts.name if facts else "-", "model": upstream.model,
                "base_url": url_without_secrets(upstream.base_url), "tier": upstream.tier, "weight": upstream.weight,
                "keys": len(upstream.api_keys), "keys_cooling": cooling,
                "state": "ready" if self.router.usable(upstream) else "cooling_down"}


def word_groups(text: str, size: int, delay: float = 0.0) -> Iterator[str]:
    """Yield ``text`` a few words at a time, optionally at a typing pace of ``delay`` seconds a group."""
    words = re.findall(r"\s*\S+\s*", text) or [text]
    for start in range(0, len(words), size):
        if delay and start:
            time.sleep(delay)
        yield "".join(words[start:start + size])
