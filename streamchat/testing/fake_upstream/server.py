"""A fake LLM API that speaks OpenAI chat completions and Anthropic Messages over real HTTP.

Run it on its own to try the service without any key::

    python -m streamchat.testing.fake_upstream --port 8400
    OPENAI_BASE_URL=http://127.0.0.1:8400/v1 ./run

It answers ``POST .../chat/completions`` and ``POST .../v1/messages`` with
chunked Server-Sent Events, one HTTP chunk per event, paced like a model:
a first-token delay, then one token every interval. The tests and the
benchmark reach it through the same base-URL settings as production.

Behaviour per request: a line ``fake: {...}`` in the last user message
overrides the defaults (set on the command line) with any of:

    text, tokens, token_chars    the reply (default: ``tokens`` words of a fixed text)
    repeat      send ``text`` this many times over (a long reply from a short directive)
    first_token_ms, interval_ms  pacing; interval 0 sends every token in one write
    status, retry_after, retry_after_ms   answer with an HTTP error instead
    error_message   that error's message (as a proxy that echoes the key it was sent would)
    fault       drop_after | error_after | stall_after | bad_json | not_sse | json_body |
                no_done | no_text | keepalive | hang | close_before_headers
    after       how many tokens the fault waits for (default 0)
    split       send every event in pieces of this many bytes ...
    split_ms    ... this many ms apart (so a line or a UTF-8 character is cut across reads)
    cuts        instead of split: byte offsets at which each write is cut, the pieces split_ms apart
    newline     "\\n" (default), "\\r\\n" or "\\r"
    body_file   replay this file as the SSE body, byte for byte (recorded real streams)
    set_cookie  send this Set-Cookie header with the stream (as Cloudflare in front of OpenAI does)
    headers     more response headers with the stream, e.g. {"x-ratelimit-remaining-requests": "0"}
    framing     "chunked" (default); "close": no length, the body ends when the connection closes
                (HTTP/1.0 style); "chunked-close": chunked, with Connection: close; "gzip": chunked and
                gzip-compressed, flushed at every write
    reject_stream_options   answer 400 to a request with ``stream_options`` (as some compatible servers do)
    id          a tag to find this request in ``GET /_fake/requests``
    openai, anthropic   overrides for that protocol only, e.g. {"openai": {"status": 500}}
    keys        overrides for the request sent with that key, e.g. {"key-a": {"status": 429}}

``GET /_fake/requests`` lists what was asked and when each connection was
seen closed; ``GET /_fake/stats`` sums it up for the benchmark.

Over TLS (``tls``, a server context) it counts full and resumed handshakes
and those that failed (a client refusing the certificate); ``tls_delay_ms``
holds every handshake back that long, as the network's round trips would;
``idle_close_ms`` closes a connection left that long without a request, as
providers close idle keep-alive connections.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import ssl
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

from .wires import WIRES, Wire, sse_event

DEFAULT_TEXT = (
    "Streaming keeps a chat responsive: the first words arrive while the model is still "
    "thinking about the rest, so the reader starts reading at once instead of staring at a "
    "spinner. "
)
DIRECTIVE = re.compile(r"^fake:\s*(\{.*\})\s*$", re.MULTILINE)
DEFAULTS = {"first_token_ms": 200, "interval_ms": 20, "tokens": 100}


@dataclass
class Record:
    """What the fake saw of one request."""

    seq: int
    id: str
    path: str
    protocol: str
    connection: int
    headers: dict[str, str]  # without the key
    body: Any
    body_size: int  # bytes on the wire
    key_end: str  # the last four characters of the key it was sent with ("" for none)
    started: float
    tokens_sent: int = 0
    prompt_tokens: int = 0  # what its usage events report as the input: one per word sent
    finished: float | None = None  # the whole reply was written
    peer_closed: float | None = None  # the client closed the connection before that
    held_back: bool = False  # the client stopped reading long enough to fill every buffer on the way
    events: list[str] = field(default_factory=list)


def prompt_tokens(body: dict[str, Any]) -> int:
    """The fake's token count of a request's prompt: one per word of its messages and system prompt."""
    texts = [m.get("content") for m in body.get("messages") or [] if isinstance(m, dict)]
    texts.append(body.get("system"))
    return sum(len(text.split()) for text in texts if isinstance(text, str))


def tokens_of(params: dict[str, Any]) -> list[str]:
    """Return the reply's tokens as the fake will send them."""
    text = params.get("text")
    if text is not None and params.get("repeat"):
        text *= int(params["repeat"])
    if text is None:
        words = re.findall(r"\S+\s*", DEFAULT_TEXT)
        count = int(params.get("tokens", DEFAULTS["tokens"]))
        return [words[i % len(words)] for i in range(count)]
    size = params.get("token_chars")
    if size:
        return [text[i:i + size] for i in range(0, len(text), size)]
    return re.findall(r"\S*\s+|\S+$", text) or [text]


def directive_of(body: Any) -> dict[str, Any]:
    """Return the ``fake: {...}`` overrides found in the last user message, if any."""
    try:
        messages = body["messages"]
        content = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
        match = DIRECTIVE.search(content)
        return json.loads(match.group(1)) if match else {}
    except (KeyError, TypeError, StopIteration, ValueError, AttributeError):
        return {}


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@functools.lru_cache(maxsize=64)
def burst_bytes(protocol: str, model: str, tokens: tuple[str, ...], newline: str) -> bytes:
    """Every token as its own chunked SSE event, serialized once: the benchmark's bursts repeat."""
    wire = WIRES[protocol](model)
    return b"".join(http_chunk(sse_event(*wire.token(token), newline)) for token in tokens)


class FakeUpstream:
    """The server: start it with ``start_in_thread()`` (tests) or ``serve_forever()`` (command line)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, defaults: dict[str, Any] | None = None,
                 keep_records: int = 10000, tls: ssl.SSLContext | None = None, tls_delay_ms: float = 0,
                 idle_close_ms: float = 0):
        self.host = host
        self.port = port
        self.tls = tls  # a server context: speak HTTPS, as every hosted provider does
        self.tls_delay_ms = tls_delay_ms
        self.idle_close_ms = idle_close_ms
        self.handshakes = self.resumed = self.handshake_failures = self.idle_closed = 0
        self.accepted = 0  # TCP connections accepted, their TLS handshake done or not
        self.accepted_at: dict[int, float] = {}  # connection number -> when its TCP connection was accepted
        self.closed_idle: set[int] = set()  # the numbers of the connections closed for idling
        self.defaults = {**DEFAULTS, **(defaults or {})}
        self.keep_records = keep_records
        self.records: list[Record] = []
        self.connections = 0
        self._transports: set[asyncio.Transport] = set()
        self.changed = threading.Condition()
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        protocol = (lambda: _Handshake(self)) if self.tls else (lambda: _Connection(self))
        self._server = await self._loop.create_server(protocol, self.host, self.port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]

    async def serve_forever(self) -> None:
        await self.start()
        print(f"fake upstream listening on {self.url}", flush=True)
        await self._server.serve_forever()

    def start_in_thread(self) -> "FakeUpstream":
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.close()
            self._stopped.set()

        self._stopped = threading.Event()
        threading.Thread(target=run, name="fake-upstream", daemon=True).start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop and self._server:
            for transport in list(self._transports):
                self._loop.call_soon_threadsafe(transport.abort)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._stopped.wait(10)

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, predicate, timeout: float = 10.0):
        """Block until ``predicate()`` is truthy (checked on every change), returning its value."""
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def find(self, tag: str) -> Record | None:
        return next((r for r in reversed(self.records) if r.id == tag), None)

    def requests_on(self, connection: int) -> int:
        """How many requests connection number ``connection`` carried."""
        return sum(1 for r in self.records if r.connection == connection)

    def new_record(self, **fields: Any) -> Record:
        self._seq += 1
        record = Record(seq=self._seq, started=time.monotonic(), **fields)
        self.records.append(record)
        if len(self.records) > self.keep_records:
            del self.records[: len(self.records) - self.keep_records]
        return record

    def stats(self) -> dict[str, Any]:
        records = list(self.records)
        return {"requests": len(records), "connections": self.connections, "handshakes": self.handshakes,
                "resumed": self.resumed, "handshake_failures": self.handshake_failures, "idle_closed": self.idle_closed,
                "open": sum(1 for r in records if r.finished is None and r.peer_closed is None),
                "finished": sum(1 for r in records if r.finished is not None),
                "peer_closed": sum(1 for r in records if r.peer_closed is not None),
                "closes": {r.id: r.peer_closed for r in records if r.peer_closed is not None and r.id}}


class _Handshake(asyncio.Protocol):
    """A TCP connection's TLS handshake, held back ``tls_delay_ms``, then handed to a ``_Connection``."""

    def __init__(self, server: FakeUpstream):
        self.server = server

    def connection_made(self, transport):
        transport.pause_reading()  # the ClientHello waits in the kernel until the delay is over
        self.server._transports.add(transport)
        self.accepted = time.monotonic()
        self.server.accepted += 1
        self.server.notify()
        asyncio.ensure_future(self._handshake(transport))

    def connection_lost(self, exc):
        pass

    async def _handshake(self, transport) -> None:
        server = self.server
        try:
            await asyncio.sleep(server.tls_delay_ms / 1000)
            connection = _Connection(server)
            tls_transport = await asyncio.get_running_loop().start_tls(transport, connection, server.tls,
                                                                       server_side=True)
        except (OSError, ssl.SSLError, ConnectionError, asyncio.CancelledError):
            server.handshake_failures += 1
            transport.abort()
            server.notify()
            return
        finally:
            server._transports.discard(transport)
        if tls_transport is None:  # the client left during the handshake
            return
        server.handshakes += 1
        server.resumed += bool(tls_transport.get_extra_info("ssl_object").session_reused)
        connection.accepted = self.accepted
        connection.connection_made(tls_transport)


class _Connection(asyncio.Protocol):
    """One client connection: parse requests one after another, stream each reply."""

    def __init__(self, server: FakeUpstream):
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.record: Record | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.number = 0
        self.accepted: float | None = None  # over TLS: when the TCP connection was, before its handshake

    def connection_made(self, transport):
        self.transport = transport
        self.server._transports.add(transport)
        self.server.connections += 1
        self.number = self.server.connections
        self.server.accepted_at[self.number] = self.accepted or time.monotonic()
        self.server.notify()
        if self.buffer:  # over TLS a request may have come with the end of the handshake
            self._try_request()
        else:
            self._idle()

    def _idle(self) -> None:
        if self.server.idle_close_ms:
            self.idle_timer = asyncio.get_running_loop().call_later(self.server.idle_close_ms / 1000, self._close_idle)

    def _close_idle(self) -> None:
        if self.record is None and not self.buffer and not self.transport.is_closing():
            self.server.idle_closed += 1
            self.server.closed_idle.add(self.number)
            self.transport.close()
            self.server.notify()

    def connection_lost(self, exc):
        self.server._transports.discard(self.transport)
        if self.timer:
            self.timer.cancel()
        if self.idle_timer:
            self.idle_timer.cancel()
        record = self.record
        if record is not None and record.finished is None:
            record.peer_closed = time.monotonic()
            self.server.notify()

    def pause_writing(self):
        # asyncio: our write buffer passed its high-water mark, the kernel's buffers being full already.
        if self.record is not None:
            self.record.held_back = True
            self.server.notify()

    def data_received(self, data):
        self.buffer += data
        if self.idle_timer:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.record is None and self.transport is not None:
            self._try_request()

    def _try_request(self) -> None:
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        lines = self.buffer[:head_end].decode("latin-1").split("\r\n")
        method, path, _ = (lines[0].split(" ") + ["", ""])[:3]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        if len(self.buffer) < head_end + 4 + length:
            return
        body_bytes = self.buffer[head_end + 4: head_end + 4 + length]
        self.buffer = self.buffer[head_end + 4 + length:]
        self._handle(method, path, headers, body_bytes)

    def _send_json(self, status: int, payload: Any, extra: str = "") -> None:
        body = json.dumps(payload).encode()
        self.transport.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n".encode() + body)

    def _handle(self, method: str, path: str, headers: dict[str, str], body_bytes: bytes) -> None:
        server = self.server
        if method == "GET" and path.startswith("/_fake/"):
            if path == "/_fake/stats":
                self._send_json(200, server.stats())
            else:
                self._send_json(200, [asdict(r) for r in server.records])
            return
        protocol = "openai" if path.endswith("/chat/completions") else "anthropic" if path.endswith("/v1/messages") else ""
        if method != "POST" or not protocol:
            self._send_json(404, {"error": {"message": f"no route {method} {path}"}})
            return
        try:
            body = json.loads(body_bytes)
        except ValueError:
            self._send_json(400, {"error": {"message": "body is not JSON"}})
            return
        directive = directive_of(body)
        key = headers.get("authorization", "").removeprefix("Bearer ") or headers.get("x-api-key", "")
        params = {**server.defaults, **directive, **directive.get(protocol, {}), **directive.get("keys", {}).get(key, {})}
        shown = {k: v for k, v in headers.items() if k not in ("authorization", "x-api-key")}
        shown["has-key"] = str(bool(headers.get("authorization") or headers.get("x-api-key")))
        record = server.new_record(id=str(params.get("id", "")), path=path, protocol=protocol, key_end=key[-4:],
                                   connection=self.number, headers=shown, body=body,
                                   body_size=len(body_bytes), prompt_tokens=prompt_tokens(body))
        self.record = record
        server.notify()
        if params.get("reject_stream_options") and "stream_options" in body:
            # What some OpenAI-compatible servers answer to a field they do not know.
            self._send_json(400, {"error": {"message": "Unrecognized request argument supplied: stream_options",
                                            "type": "invalid_request_error", "param": "stream_options"}})
            self.reply_done()
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        wire = WIRES[protocol](str(body.get("model", "")), record.prompt_tokens, include_usage)
        _Reply(self, record, wire, params).begin()

    def reply_done(self) -> None:
        """The reply is complete; the connection may carry the next request."""
        self.record.finished = time.monotonic()
        self.record = None
        self.server.notify()
        if self.buffer:
            self._try_request()
        elif self.transport is not None and not self.transport.is_closing():
            self._idle()


class _Reply:
    """Write one reply, step by step, on the event loop's timers."""

    def __init__(self, conn: _Connection, record: Record, wire: Wire, params: dict[str, Any]):
        self.conn = conn
        self.record = record
        self.wire = wire
        self.params = params
        self.loop = asyncio.get_running_loop()
        self.tokens = tokens_of(params)
        self.newline = params.get("newline", "\n")
        self.fault = params.get("fault")
        self.after = int(params.get("after", 0))
        self.index = 0
        self.cursor = 0.0  # when the last queued split piece goes out
        self.framing = params.get("framing", "chunked")
        self.gzip = zlib.compressobj(wbits=31) if self.framing == "gzip" else None

    def begin(self) -> None:
        status = int(self.params.get("status", 200))
        fault = self.fault
        if fault == "hang":
            return
        if fault == "close_before_headers":
            self.conn.transport.close()
            return
        if status != 200:
            extra = ""
            if "retry_after" in self.params:
                extra += f"retry-after: {self.params['retry_after']}\r\n"
            if "retry_after_ms" in self.params:
                extra += f"retry-after-ms: {self.params['retry_after_ms']}\r\n"
            self.conn._send_json(status, self.wire.error_body(status, self.params.get("error_message", "")), extra)
            self.conn.reply_done()
            return
        if fault == "json_body":
            self.conn._send_json(200, self.wire.json_reply("".join(self.tokens)))
            self.conn.reply_done()
            return
        content_type = "text/html" if fault == "not_sse" else "text/event-stream; charset=utf-8"
        extra = f"Set-Cookie: {self.params['set_cookie']}\r\n" if "set_cookie" in self.params else ""
        extra += "".join(f"{name}: {value}\r\n" for name, value in self.params.get("headers", {}).items())
        if self.framing in ("close", "chunked-close"):
            extra += "Connection: close\r\n"
        if self.framing != "close":
            extra += "Transfer-Encoding: chunked\r\n" + ("Content-Encoding: gzip\r\n" if self.gzip else "")
        self.conn.transport.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nCache-Control: no-cache\r\n{extra}\r\n".encode())
        if "body_file" in self.params:  # replay a recorded stream byte for byte
            with open(self.params["body_file"], "rb") as handle:
                self._write(handle.read())
            self._finish()
            return
        if fault == "not_sse":
            self._write(b"<html><body><h1>Welcome to nginx!</h1></body></html>\n")
            self._finish()
            return
        self._write(b"".join(sse_event(n, d, self.newline) for n, d in self.wire.preamble()))
        self._schedule(self.params["first_token_ms"])

    def _schedule(self, ms: float) -> None:
        self.conn.timer = self.loop.call_later(ms / 1000, self._step)

    def _frame(self, data: bytes) -> bytes:
        if self.gzip is not None:
            data = self.gzip.compress(data) + self.gzip.flush(zlib.Z_SYNC_FLUSH)
        return data if self.framing == "close" else http_chunk(data)

    def _write(self, data: bytes) -> None:
        split = self.params.get("split")
        cuts = self.params.get("cuts")
        if not split and not cuts:
            self.conn.transport.write(self._frame(data))
            return
        # Send the pieces as separate writes some ms apart, so they arrive as separate reads;
        # a cursor keeps every piece of the reply in order.
        delay = self.params.get("split_ms", 5) / 1000
        bounds = sorted({0, len(data), *(c for c in cuts or () if 0 < c < len(data))}) if cuts else \
            list(range(0, len(data), split)) + [len(data)]
        for start, end in zip(bounds, bounds[1:]):
            self.cursor = max(self.cursor, self.loop.time()) + delay
            self.loop.call_at(self.cursor, self._raw_write, self._frame(data[start:end]))

    def _raw_write(self, data: bytes) -> None:
        if not self.conn.transport.is_closing():
            self.conn.transport.write(data)

    def _step(self) -> None:
        if self.conn.transport.is_closing():
            return
        if self.fault in ("drop_after", "error_after", "stall_after", "bad_json") and self.index >= self.after:
            return self._fault()
        if self.fault == "keepalive":
            self._write(f": keep-alive{self.newline}{self.newline}".encode())
            return self._schedule(self.params["interval_ms"] or 10)
        if self.fault == "no_text":
            return self._end()
        interval = self.params["interval_ms"]
        if interval <= 0:  # a burst: every token in one write
            rest = tuple(self.tokens[self.index:])
            self.record.tokens_sent += len(rest)  # counted before the write: the client may read first
            self.index = len(self.tokens)
            if self.framing == "chunked":
                self.conn.transport.write(burst_bytes(self.wire.protocol, self.wire.model, rest, self.newline))
            else:
                self._write(b"".join(sse_event(*self.wire.token(token), self.newline) for token in rest))
            return self._end()
        if self.index < len(self.tokens):
            self.record.tokens_sent += 1  # counted before the write: the client may read it before the next line
            self._write(sse_event(*self.wire.token(self.tokens[self.index]), self.newline))
            self.index += 1
            return self._schedule(interval)
        self._end()

    def _fault(self) -> None:
        fault = self.fault
        if fault == "drop_after":
            self._after_queued(self.conn.transport.close)  # no terminating chunk: a dropped connection
        elif fault == "error_after":
            self._write(b"".join(sse_event(n, d, self.newline) for n, d in self.wire.stream_error()))
            self._finish()
        elif fault == "bad_json":
            self._write(f"data: {{\"choices\": [{{\"delta\": {self.newline}{self.newline}".encode())
            self._finish()
        # stall_after: send nothing more and keep the connection open

    def _end(self) -> None:
        done = self.fault != "no_done"
        events = self.wire.ending(done, self.record.tokens_sent)
        self._write(b"".join(sse_event(n, d, self.newline) for n, d in events))
        self._finish()

    def _finish(self) -> None:
        self._after_queued(self._terminate)

    def _after_queued(self, action) -> None:
        # After the last queued split piece, whenever that is: checking the clock instead ("is a piece still
        # to go?") let a starved thread end the body before pieces queued a moment earlier.
        if self.cursor:
            self.loop.call_at(self.cursor + 0.001, action)
        else:
            action()

    def _terminate(self) -> None:
        transport = self.conn.transport
        if not transport.is_closing():
            if self.gzip is not None:
                transport.write(http_chunk(self.gzip.flush()))
            if self.framing != "close":
                transport.write(b"0\r\n\r\n")
        self.conn.reply_done()
        if self.framing in ("close", "chunked-close"):
            transport.close()  # for "close", this is the end of the body
