"""An outage of a shared store (Redis), as one process sees it: logged once as it starts and once as it ends."""

from __future__ import annotations

import logging
import time

from ..redaction import one_line

log = logging.getLogger("streamchat")

RETRY_EVERY = 1.0  # seconds between attempts to reach a store that is down


class Outage:
    """Whether a shared store is down for this process; logged once as it goes and once as it returns."""

    def __init__(self, what: str, meanwhile: str, retry_every: float = RETRY_EVERY, clock=time.monotonic):
        self.what = what
        self.meanwhile = meanwhile  # what this process does until the store is back
        self.retry_every = retry_every
        self.clock = clock
        self.down_since: float | None = None  # a clock() reading
        self.down_since_wall: float | None = None  # the same moment, as a Unix time for /healthz
        self._retry_at = 0.0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def should_try(self) -> bool:
        """Return whether to try the store now: always while it is up, once per ``retry_every`` while down."""
        if self.down_since is None:
            return True
        now = self.clock()
        if now < self._retry_at:
            return False
        self._retry_at = now + self.retry_every  # the callers arriving meanwhile do not try too
        return True

    def failed(self, error: object) -> None:
        if self.down_since is None:
            self.down_since = self.clock()
            self.down_since_wall = time.time()
            self._retry_at = self.down_since + self.retry_every
            log.warning("%s unreachable (%s): %s until it is back",
                        self.what, one_line(str(error)) or type(error).__name__, self.meanwhile)

    def recovered(self) -> None:
        if self.down_since is not None:
            log.warning("%s reachable again after %.1f s", self.what, self.clock() - self.down_since)
            self.down_since = self.down_since_wall = None

    def health(self) -> dict:
        """Return ``{"healthy": ...}``, with since when and what this process does meanwhile when it is not."""
        if self.down_since is None:
            return {"healthy": True}
        since = time.strftime("%H:%M:%SZ", time.gmtime(self.down_since_wall))
        return {"healthy": False, "error": f"{self.what} unreachable since {since}: {self.meanwhile}"}
