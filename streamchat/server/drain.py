"""Graceful restarts: on SIGTERM a worker turns unready, lets its open replies finish, then ends the rest.

Platforms restart processes all the time (Heroku: on every deploy, and every
dyno once a day), sending SIGTERM and killing what still runs some seconds
later. gunicorn alone would stop accepting connections, wait for its graceful
timeout, then kill whatever handler still ran: a reply cut mid-chunk, with no
terminating chunk, and no word to the reader. Here, from the SIGTERM:

- ``/readyz`` answers 503 (``DRAIN.draining``), so a load balancer sends no
  more; gunicorn stops accepting within a second, and closes each kept-alive
  connection after its current response;
- kept-alive connections waiting for their next request are closed at once
  (``StreamingWorker``);
- open replies go on for up to ``DRAIN_SECONDS``; those still running then are
  ended (``ServiceRestarting`` thrown where each waits): the relay ends the
  reply as ``cut_short`` with reason ``restarting``, the framer writes the
  restarting notice and the body ends cleanly, upstream closed; a recorded
  reply's record ends the same way, so the page can ask again;
- the worker exits as soon as no connection is left, and runs the exit hooks
  (the stream records' last writes to Redis) before it does.

A reply registers how to end it (``register``) while its body streams.
Outside gevent nothing here is used.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Callable

from ..errors import ServiceRestarting

log = logging.getLogger("streamchat")

END_AGAIN_EVERY = 0.25  # after the deadline: a reply that could not be ended where it waited is tried again


class Drain:
    """This process's drain: the replies it could end, and whether it is draining."""

    def __init__(self) -> None:
        self.started_at: float | None = None
        self._ending: dict[int, Callable[[BaseException], None]] = {}
        self._ids = itertools.count()
        self.exit_hooks: list[Callable[[], None]] = []

    @property
    def draining(self) -> bool:
        return self.started_at is not None

    def register(self, end: Callable[[BaseException], None]) -> int:
        """Remember how to end an open reply (``end(error)``); returns the id to ``unregister`` it with."""
        key = next(self._ids)
        self._ending[key] = end
        return key

    def unregister(self, key: int) -> None:
        self._ending.pop(key, None)

    @property
    def open_replies(self) -> int:
        return len(self._ending)

    def run(self, seconds: float) -> None:
        """Drain: wait up to ``seconds`` for open replies to finish, then end the rest. Runs in its own greenlet."""
        if self.draining:
            return
        self.started_at = time.monotonic()
        deadline = self.started_at + seconds
        log.info("draining: %d replies open, ending any still open in %g s", self.open_replies, seconds)
        while self._ending and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        if self._ending:
            log.warning("drain time is up: ending %d open replies with the restarting notice", self.open_replies)
        while self._ending:
            for end in list(self._ending.values()):
                end(ServiceRestarting())
            time.sleep(END_AGAIN_EVERY)

    def exit(self) -> None:
        """Run the exit hooks (the worker's last act)."""
        for hook in self.exit_hooks:
            try:
                hook()
            except Exception:
                log.exception("exit hook %r failed", hook)


DRAIN = Drain()
