"""The circuit breaker, shared by every worker of every instance through Redis.

A provider that one worker finds unavailable must be skipped by all of them for
the cool-down, yet asking Redis on every request would put a round trip in
front of every first token. So each process keeps the domain's breaker in
memory, as before, and Redis carries the changes:

- opening (or closing) a provider sets (or deletes) one expiring key,
  ``streamchat:breaker:<provider>``, and publishes the change on
  ``streamchat:breaker``;
- one listener per process applies what the others publish, and on
  (re)connecting loads the keys set while it was not listening.

While Redis is away each process falls back to its own breaker (what it has
seen itself), logs that once, and the listener keeps retrying once a second.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import TYPE_CHECKING, Callable


from ..domain.breaker import CircuitBreaker
from ..errors import ProviderError
from .outage import Outage
from .redis import redis_errors

if TYPE_CHECKING:  # the client library is loaded by shared.redis.connect, when REDIS_URL is set
    import redis

KEY = "streamchat:breaker:"
CHANNEL = "streamchat:breaker"
PING_EVERY = 5.0  # seconds of silence on the channel after which the listener checks its connection


class SharedBreaker(CircuitBreaker):
    """``CircuitBreaker`` whose openings and closings reach every process sharing ``client``'s Redis."""

    def __init__(self, cooldown: float, client: redis.Redis, clock: Callable[[], float] = time.monotonic):
        super().__init__(cooldown, clock)
        self.client = client
        self.outage = Outage("shared circuit breaker (Redis)", "this worker skips only the providers it saw fail")
        self._listener_pid: int | None = None

    def record(self, provider: str, error: ProviderError | None) -> None:
        before = self._open.get(provider)
        super().record(provider, error)
        after = self._open.get(provider)
        if after != before:
            self._announce(provider, after)

    def cool(self, name: str, seconds: float, reason: str) -> None:
        super().cool(name, seconds, reason)
        self._announce(name, self._open[name])

    def _announce(self, provider: str, entry: tuple[float, str] | None) -> None:
        if entry is None:
            change = {"provider": provider}
        else:
            until, reason = entry
            change = {"provider": provider, "reason": reason, "ms": max(1, int((until - self.clock()) * 1000))}
        try:
            with self.client.pipeline(transaction=False) as pipe:
                if entry is None:
                    pipe.delete(KEY + provider)
                else:
                    pipe.set(KEY + provider, change["reason"], px=change["ms"])
                pipe.publish(CHANNEL, json.dumps(change))
                pipe.execute()
        except redis_errors() as exc:
            self.outage.failed(exc)

    def _apply(self, change: dict) -> None:
        provider = change["provider"]
        if "ms" in change:
            self._open[provider] = (self.clock() + change["ms"] / 1000, change["reason"])
        else:
            self._open.pop(provider, None)

    def listen(self) -> None:
        """Start this process's listener, once per process (a forked worker starts its own)."""
        if self._listener_pid == os.getpid():
            return
        self._listener_pid = os.getpid()
        try:
            self._load()  # before the first request: a worker that starts mid cool-down skips at once
        except redis_errors() as exc:
            self.outage.failed(exc)
        # Under gevent's monkey-patching this thread is a greenlet.
        threading.Thread(target=self._listen, name="streamchat-breaker", daemon=True).start()

    def _listen(self) -> None:
        while True:
            try:
                self._follow()
            except redis_errors() as exc:
                self.outage.failed(exc)
            time.sleep(self.outage.retry_every)

    def _follow(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(CHANNEL)
            self._load()  # what was opened while this process was not listening
            self.outage.recovered()
            quiet_since = time.monotonic()
            while True:
                message = pubsub.get_message(timeout=1.0)
                if message is not None:
                    quiet_since = time.monotonic()
                    if message["type"] == "message":  # not the answer to our ping
                        self._apply(json.loads(message["data"]))
                elif time.monotonic() - quiet_since > PING_EVERY:
                    pubsub.ping()  # a connection that died without a word fails here
                    quiet_since = time.monotonic()
        finally:
            pubsub.close()

    def _load(self) -> None:
        keys = list(self.client.scan_iter(match=KEY + "*", count=100))
        if not keys:
            return
        with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            replies = pipe.execute()
        for key, reason, ms in zip(keys, replies[::2], replies[1::2]):
            if reason is not None and ms and ms > 0:
                self._apply({"provider": key[len(KEY):], "reason": reason, "ms": ms})

    def health(self) -> dict:
        return self.outage.health()
