"""The circuit breaker: skip a provider that was unavailable, for a cool-down, instead of waiting on it again."""

from __future__ import annotations

import time
from typing import Callable

from ..errors import ProviderError, ProviderUnavailable

MAX_COOLDOWN = 3600.0


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

    def cool(self, name: str, seconds: float, reason: str) -> None:
        """Skip ``name`` (an upstream, or one of its keys) for ``seconds``, whatever the error was."""
        self._open[name] = (self.clock() + min(seconds, MAX_COOLDOWN), reason)

    def state(self) -> dict[str, dict[str, float | str]]:
        """Return the providers cooling down now, with why and for how many more seconds."""
        now = self.clock()
        return {name: {"reason": reason, "retry_in": round(until - now, 1)}
                for name, (until, reason) in list(self._open.items()) if until > now}
