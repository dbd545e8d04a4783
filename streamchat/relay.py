"""Choose who answers, before the first byte, then stream the answer.

``Relay.open()`` walks the provider chain: it skips providers the circuit
breaker is cooling down, starts each remaining one and waits (under the
provider's first-token deadline) for its first text. The first provider to
produce text answers ``live``; if none does, the rules responder answers in
``fallback`` mode with the reason of the first failure. Either way the
caller gets a ``Reply`` whose mode and headers are final, and whose
``body()`` streams UTF-8 bytes.

After the first byte nothing can change the status or headers, so a live
stream that breaks ends with ``CUT_SHORT_NOTICE`` in the body instead.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .disconnect import ClientDisconnected, ClientWatch
from .errors import ProviderError, ProviderUnavailable
from .providers import Provider
from .rules import RulesStore

log = logging.getLogger("streamchat")

#: Ends a reply that broke after text was sent; the chat page looks for it.
CUT_SHORT_NOTICE = "\n\n[Reply cut short: the model stopped responding. Please try again.]"
#: X-Terminal-Reason when provider code raised something that is not a ProviderError: a bug, logged with its traceback.
INTERNAL_ERROR = "internal_error"
MAX_COOLDOWN = 3600.0
FALLBACK_WORDS_PER_CHUNK = 3


class CircuitBreaker:
    """Skip a provider for a cool-down after it was unavailable (429, 5xx, timeouts)."""

    def __init__(self, cooldown: float, clock: Callable[[], float] = time.monotonic):
        self.cooldown = cooldown
        self.clock = clock
        self._open: dict[str, tuple[float, str]] = {}  # provider -> (until, reason)

    def skip_reason(self, provider: str) -> str | None:
        """Return why ``provider`` is being skipped now, or None to try it."""
        entry = self._open.get(provider)
        if entry is None:
            return None
        until, reason = entry
        if self.clock() >= until:
            del self._open[provider]  # half-open: the next request tries it again
            return None
        return reason

    def record(self, provider: str, error: ProviderError | None) -> None:
        """Note the outcome of a call: None for success."""
        if error is None:
            self._open.pop(provider, None)
        elif isinstance(error, ProviderUnavailable):
            wait = max(self.cooldown, min(error.retry_after or 0.0, MAX_COOLDOWN))
            if wait > 0:
                self._open[provider] = (self.clock() + wait, error.reason)

    def state(self) -> dict[str, dict[str, float | str]]:
        now = self.clock()
        return {name: {"reason": reason, "retry_in": round(until - now, 1)}
                for name, (until, reason) in list(self._open.items()) if until > now}


@dataclass
class StreamStats:
    """What the access log says about one reply; the body generator fills it in as it goes."""

    mode: str = "live"
    reason: str = ""
    provider: str = ""
    model: str = ""
    rule: str = ""
    chunks: int = 0
    bytes: int = 0
    first_byte_at: float | None = None
    ended: str = "open"  # complete | cut_short | client_gone
    cut_reason: str = ""
    failures: list[str] = field(default_factory=list)


@dataclass
class Reply:
    """A reply whose mode is decided; ``body()`` streams it."""

    stats: StreamStats
    first: str
    rest: Iterator[str]
    watch: ClientWatch
    gauge: "OpenStreams"

    def body(self) -> Iterator[bytes]:
        """Yield the reply as UTF-8 chunks; always close the upstream, however the stream ends."""
        stats = self.stats
        rest = self.rest
        self.gauge.count += 1
        try:
            chunk = self.first.encode()
            stats.first_byte_at = time.perf_counter()
            stats.chunks, stats.bytes = 1, len(chunk)
            yield chunk
            for text in rest:
                chunk = text.encode()
                stats.chunks += 1
                stats.bytes += len(chunk)
                yield chunk
            stats.ended = "complete"
        except ProviderError as exc:
            stats.ended, stats.cut_reason = "cut_short", exc.reason
            log.warning("stream cut short: %s", exc)
            yield CUT_SHORT_NOTICE.encode()
        except (ClientDisconnected, GeneratorExit):
            stats.ended = "client_gone"
        except Exception:  # a bug, not the user's fault: end the reply as for a provider failure
            stats.ended, stats.cut_reason = "cut_short", INTERNAL_ERROR
            log.exception("stream cut short by an unexpected error")
            yield CUT_SHORT_NOTICE.encode()
        finally:
            self.gauge.count -= 1
            self.watch.stop()
            close = getattr(rest, "close", None)
            if close is not None:
                close()


class OpenStreams:
    """How many reply bodies are streaming now in this process (for /healthz and leak checks)."""

    count = 0


class Relay:
    """The provider chain, the circuit breaker and the rules responder behind it."""

    def __init__(self, chain: list[Provider], rules: RulesStore, breaker: CircuitBreaker,
                 fallback_delay: float = 0.0):
        self.open_streams = OpenStreams()
        self.chain = chain
        self.rules = rules
        self.breaker = breaker
        self.fallback_delay = fallback_delay

    def open(self, messages: list[dict[str, str]], watch: ClientWatch, *, live_denied: str | None = None) -> Reply:
        """Return a reply from the first provider that produces text in time, else from the rules.

        ``live_denied`` is a reason (such as ``"budget"``) to answer from the rules without trying any provider.
        """
        stats = StreamStats()
        reasons: list[str] = []  # why each provider did not answer, in chain order
        for provider in self.chain if live_denied is None else ():
            skip = self.breaker.skip_reason(provider.name)
            if skip:
                reasons.append(skip)
                stats.failures.append(f"{provider.name}:{skip}(cooling down)")
                continue
            stream = provider.stream(messages)
            try:
                first = next(stream)
            except ProviderError as exc:
                self.breaker.record(provider.name, exc)
                reasons.append(exc.reason)
                stats.failures.append(f"{provider.name}:{exc.reason}")
                log.warning("provider failed before the first text: %s", exc)
                continue
            except ClientDisconnected:
                raise
            except Exception:  # a bug in provider code costs this reply its live answer, never the user's reply
                reasons.append(INTERNAL_ERROR)
                stats.failures.append(f"{provider.name}:{INTERNAL_ERROR}")
                log.exception("provider %s failed unexpectedly before the first text", provider.name)
                continue
            self.breaker.record(provider.name, None)
            stats.provider, stats.model = provider.name, provider.model
            return Reply(stats, first, stream, watch, self.open_streams)
        # The first failure is the one the site owner configured first: report that one.
        reason = reasons[0] if reasons else live_denied or "no_provider"
        stats.mode, stats.reason, stats.provider = "fallback", reason, "rules"
        stats.rule, text = self.rules.reply(messages)
        pieces = word_groups(text, FALLBACK_WORDS_PER_CHUNK, self.fallback_delay)
        return Reply(stats, next(pieces, ""), pieces, watch, self.open_streams)


def word_groups(text: str, size: int, delay: float = 0.0) -> Iterator[str]:
    """Yield ``text`` a few words at a time, optionally at a typing pace of ``delay`` seconds a group."""
    words = re.findall(r"\s*\S+\s*", text) or [text]
    for start in range(0, len(words), size):
        if delay and start:
            time.sleep(delay)
        yield "".join(words[start:start + size])
