"""An asynchronous HTTP/1.1 load generator for streaming responses, cheap enough to share the machine.

Each stream is one connection (``Connection: close``) driven by an asyncio
``Protocol``: it records when the first body byte of the reply arrived, the
gap between chunk arrivals, the total time, payload bytes, the status and
``X-Terminal-Mode``. Everything is bounded: a stream still open at the
deadline is aborted and counted as an error.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field

# In a direct OpenAI stream the first events (role, filters) carry no text: the
# first *token* is the first chunk with non-empty content.
FIRST_TOKEN = re.compile(rb'"content": ?"[^"]|"text_delta"')


@dataclass
class StreamResult:
    tag: str
    started: float
    status: int = 0
    mode: str = ""
    first_byte: float | None = None  # first reply text (direct: first token event)
    ended: float | None = None
    payload_bytes: int = 0
    chunks: int = 0  # HTTP chunks of the body: what the server wrote, however the network grouped them
    reads: int = 0  # reads that brought body bytes; fewer than chunks when this side fell behind
    max_gap: float = 0.0
    error: str = ""
    closed_at: float | None = None  # when we hung up on purpose (abort scenario), CLOCK_MONOTONIC
    stream_id: str = ""  # X-Stream-Id, as soon as the head arrived
    cache: str = ""  # X-Terminal-Cache: hit, joined, miss

    @property
    def ttfb(self) -> float | None:
        return None if self.first_byte is None else self.first_byte - self.started

    @property
    def total(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error and self.ended is not None


class _Stream(asyncio.Protocol):
    def __init__(self, request: bytes, result: StreamResult, done: asyncio.Future, direct: bool,
                 abort_after_chunks: int | None):
        self.request = request
        self.result = result
        self.done = done
        self.direct = direct
        self.abort_after = abort_after_chunks
        self.head = b""
        self.body = b""  # undecoded chunked bytes
        self.last = 0.0
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        if self.abort_after is not None and self.abort_after < 0:
            transport.write(self.request[:len(self.request) // 2])
            self.result.closed_at = time.monotonic()
            self.result.ended = time.perf_counter()
            transport.abort()
            return
        transport.write(self.request)

    def data_received(self, data):
        now = time.perf_counter()
        result = self.result
        if not result.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end].decode("latin-1"), self.head[end + 4:]
            result.status = int(head.split(" ", 2)[1])
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "x-terminal-mode":
                    result.mode = value.strip()
                elif name.lower() == "x-stream-id":
                    result.stream_id = value.strip()
                elif name.lower() == "x-terminal-cache":
                    result.cache = value.strip()
            self.last = now
            if self.abort_after == 0:
                result.closed_at = time.monotonic()
                result.ended = now
                self.transport.abort()
                return
        if not data:
            return
        self.body += data
        payload, chunks, finished = self._decode_chunks()
        result.chunks += chunks
        if payload:
            result.reads += 1
            result.payload_bytes += len(payload)
            if result.first_byte is None:
                if not self.direct or FIRST_TOKEN.search(payload):
                    result.first_byte = now
            else:
                gap = now - self.last
                if gap > result.max_gap:
                    result.max_gap = gap
            self.last = now
        if finished:
            result.ended = now
            self.transport.close()
        elif self.abort_after is not None and result.chunks >= self.abort_after:
            result.closed_at = time.monotonic()
            result.ended = now
            self.transport.abort()

    def _decode_chunks(self) -> tuple[bytes, int, bool]:
        body, pieces, position = self.body, [], 0
        while True:
            line_end = body.find(b"\r\n", position)
            if line_end < 0:
                break
            size = int(body[position:line_end].split(b";")[0], 16)
            if size == 0:
                self.body = b""
                return b"".join(pieces), len(pieces), True
            if len(body) < line_end + 2 + size + 2:
                break
            pieces.append(body[line_end + 2: line_end + 2 + size])
            position = line_end + 2 + size + 2
        self.body = body[position:]
        return b"".join(pieces), len(pieces), False

    def connection_lost(self, exc):
        if self.result.ended is None and self.result.closed_at is None:
            self.result.error = self.result.error or f"connection lost: {exc}"
        if not self.done.done():
            self.done.set_result(None)


def build_request(host: str, port: int, path: str, body: dict | None, headers: dict | None = None,
                  method: str = "POST") -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n{extra}\r\n").encode() + payload


async def one_stream(host: str, port: int, request: bytes, tag: str, *, direct: bool, deadline: float,
                     abort_after_chunks: int | None = None, source: str | None = None,
                     result: StreamResult | None = None) -> StreamResult:
    """Run one streaming request until it ends, we abort it, or ``deadline`` (perf_counter) passes.

    ``source``: the local address to connect from (any of 127.0.0.0/8 on Linux), so that one load
    generator can stand for many clients. ``abort_after_chunks`` of 0 hangs up as soon as the head
    arrives; a negative one sends only the first half of the request and hangs up.
    """
    loop = asyncio.get_running_loop()
    result = result or StreamResult(tag=tag, started=time.perf_counter())  # given: to watch it in flight
    done = loop.create_future()
    try:
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: _Stream(request, result, done, direct, abort_after_chunks), host, port,
                                   local_addr=(source, 0) if source else None),
            timeout=max(0.1, deadline - time.perf_counter()))
    except (OSError, asyncio.TimeoutError) as exc:
        result.error = f"connect: {exc!r}"
        return result
    try:
        await asyncio.wait_for(done, timeout=max(0.1, deadline - time.perf_counter()))
    except asyncio.TimeoutError:
        result.error = "deadline"
        transport.abort()
    return result


async def concurrent_streams(host: str, port: int, make_request, count: int, *, direct: bool, ramp: float,
                             deadline: float, abort_after=None, source=None) -> list[StreamResult]:
    """Open ``count`` streams spread evenly over ``ramp`` seconds and wait for all of them."""
    tasks = []
    start = time.perf_counter()
    for n in range(count):
        delay = start + ramp * n / max(1, count) - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tag, request = make_request(n)
        tasks.append(asyncio.ensure_future(one_stream(
            host, port, request, tag, direct=direct, deadline=deadline,
            abort_after_chunks=abort_after(n) if abort_after else None, source=source(n) if source else None)))
    return list(await asyncio.gather(*tasks))


async def visitors(host: str, port: int, make_request, count: int, *, at_once: int,
                   deadline: float) -> list[StreamResult]:
    """Send ``count`` requests, ``at_once`` of them in flight at any time, each as soon as a place is free."""
    places = asyncio.Semaphore(at_once)

    async def visit(n: int) -> StreamResult:
        async with places:
            tag, request = make_request(n)
            return await one_stream(host, port, request, tag, direct=False, deadline=deadline)

    return list(await asyncio.gather(*(visit(n) for n in range(count))))


@dataclass
class LoopResults:
    results: list[StreamResult] = field(default_factory=list)


async def looping_clients(host: str, port: int, make_request, clients: int, *, direct: bool,
                          seconds: float, source=None, results: list | None = None) -> list[StreamResult]:
    """Run ``clients`` clients that each send one request after another for ``seconds``.

    ``source()``, when given, picks the local address of each request; ``results`` may be passed in
    to watch them arrive.
    """
    stop = time.perf_counter() + seconds
    results = [] if results is None else results

    async def client(number: int) -> None:
        sequence = 0
        while time.perf_counter() < stop:
            tag, request = make_request(number * 100000 + sequence)
            sequence += 1
            results.append(await one_stream(host, port, request, tag, direct=direct, deadline=stop + 10,
                                            source=source() if source else None))

    await asyncio.gather(*(client(n) for n in range(clients)))
    return results
