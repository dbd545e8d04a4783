"""An in-process provider for view tests: queue replies or failures, then read what it was asked.

    fake = FakeProvider()
    fake.enqueue("Hello", " there")                       # a reply in two pieces
    fake.enqueue(then=RateLimited("429"))                 # no text: the rules answer
    fake.enqueue("Half a repl", then=UpstreamTimeout("")) # cut short after its text
    fake.enqueue("Late", wait=2.0)                        # a first text that takes two seconds
    app = create_app({...}, providers=[fake])
    ...
    fake.history[0].messages, fake.history[0].closed
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

from ..domain.providers import Provider
from ..domain.providers.base import DEFAULT_OPTIONS, Options
from ..domain.usage import Usage
from ..errors import ProviderError

DEFAULT_REPLY = ("Hello from the fake provider.",)


@dataclass
class FakeCall:
    """One call of ``stream()``: the messages it got, what it yielded, and whether it was closed."""

    messages: list[dict[str, str]]
    options: Options = DEFAULT_OPTIONS
    key: int = 0  # the position of the key it was asked with
    yielded: list[str] = field(default_factory=list)
    closed: bool = False


class FakeProvider(Provider):
    """A provider whose replies are queued by the test; with nothing queued it says ``DEFAULT_REPLY``."""

    name = "fake"

    def __init__(self, model: str = "fake-model", name: str = "fake", keys: int = 0, tier: int = 1,
                 weight: float = 1.0):
        self.name = name  # type: ignore[misc]  (a class attribute on real providers)
        self.api_keys = tuple(f"{name}-key-{n}" for n in range(1, keys + 1))
        self.tier, self.weight = tier, weight
        self.model = model
        self.base_url = "in-process"
        self.history: list[FakeCall] = []
        self._queue: deque[tuple[tuple[str, ...], ProviderError | None, float]] = deque()

    def enqueue(self, *pieces: str, then: ProviderError | None = None, wait: float = 0.0) -> "FakeProvider":
        """Queue a reply yielding ``pieces`` in turn (the first after ``wait`` seconds), then raising ``then``."""
        self._queue.append((pieces, then, wait))
        return self

    def stream(self, messages: list[dict[str, str]], options: Options = DEFAULT_OPTIONS,
               usage: Usage | None = None, key: int = 0) -> Iterator[str]:
        pieces, then, wait = self._queue.popleft() if self._queue else (DEFAULT_REPLY, None, 0.0)
        call = FakeCall(messages=list(messages), options=options, key=key)
        self.history.append(call)
        return self._stream(call, pieces, then, wait)

    def _stream(self, call: FakeCall, pieces: tuple[str, ...], then: ProviderError | None,
                wait: float) -> Iterator[str]:
        try:
            if wait:
                time.sleep(wait)
            for piece in pieces:
                call.yielded.append(piece)
                yield piece
            if then is not None:
                if not then.provider:
                    then.provider = self.name
                raise then
        finally:
            call.closed = True
