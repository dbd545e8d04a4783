"""Hedged first tokens: wait for two upstreams at once, take whichever writes first, close the other at once.

With ``LLM_HEDGE_AFTER`` set, each candidate's wait for its first text runs
beside the request (a greenlet under gevent, a thread elsewhere) as an
``Attempt``, so the request can stop waiting on it after that many seconds and
start the next candidate beside it. Attempts report to one queue as they
finish; the relay takes the first with text and ``cancel``s the other: under
gevent the cancel raises ``HedgeLost`` where that attempt waits, so its
upstream response is closed at once (elsewhere it is closed as soon as its
wait returns).

Without ``LLM_HEDGE_AFTER`` none of this runs: the relay waits in the request
itself, as it always did.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

from ..errors import HedgeLost
from .usage import Usage

#: Returns ``interrupt(error, still)`` for the calling greenlet (``server.disconnect.interrupter``), or None.
Interrupter = Callable[[], Callable[[BaseException, Callable[[], bool]], None] | None]


class Attempt:
    """One candidate's wait for its first text, beside the request."""

    def __init__(self, upstream: Any, key: int, stream: Iterator[str], usage: Usage,
                 finished: "queue.SimpleQueue[Attempt]", interrupter: Interrupter | None):
        self.upstream, self.key, self.stream, self.usage = upstream, key, stream, usage
        self.first: str | None = None
        self.error: BaseException | None = None
        self.done = False
        self._cancelled = False
        self._finished = finished
        self._interrupter = interrupter
        self._interrupt: Callable[[BaseException, Callable[[], bool]], None] | None = None
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name=f"first-text-{upstream.name}", daemon=True).start()

    def _run(self) -> None:
        self._interrupt = self._interrupter() if self._interrupter else None
        try:
            self.first = next(self.stream)
        except BaseException as exc:  # noqa: B036 (HedgeLost included: the relay reads it, never raises it)
            self.error = exc
        with self._lock:
            self.done = True
            close_now = self._cancelled and self.error is None
        if close_now:  # cancelled while its text was on the way: close its upstream now
            self.stream.close()
        self._finished.put(self)

    def cancel(self) -> None:
        """Stop this attempt: its upstream response is closed, now or as soon as its wait returns."""
        with self._lock:
            self._cancelled = True
            done = self.done
        if done:
            if self.error is None:
                self.stream.close()
        elif self._interrupt is not None:
            self._interrupt(HedgeLost(), lambda: not self.done)
