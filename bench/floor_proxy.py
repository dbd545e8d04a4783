"""The least a gevent proxy on this CPython can do for one chat stream: the benchmark's floor.

No Flask, no requests, no gunicorn, no validation, timeouts, fallback or logging:
one gevent ``StreamServer`` greenlet per client reads the request, sends the
upstream request on a pooled connection, and for every upstream read decodes the
HTTP chunks, parses each SSE event's JSON, takes ``choices[0].delta.content``
and writes it to the client as one HTTP chunk (the head goes out on its own first,
as gunicorn sends it, so that the two compare like with like). It handles exactly the benchmark's
traffic (Content-Length requests, the fake upstream's chunked OpenAI stream) and
nothing else. It is not part of the service: ``benchmark.py`` runs it under the
same load as the service, so that the table can say how much of the service's
cost is the language and the event loop, and how much is ours.

Run by the benchmark as ``python bench/floor_proxy.py PORT UPSTREAM_PORT --stack-imports``:
that option loads what the service's worker loads (gevent's monkey-patching, requests,
Flask, flask-limiter, PyYAML) without using any of it, so that its memory is the
service's libraries plus the least that open streams can cost.
"""

from __future__ import annotations

import gc
import json
import sys

if "--stack-imports" in sys.argv:
    from gevent import monkey

    monkey.patch_all()
    import flask  # noqa: F401
    import flask_limiter  # noqa: F401
    import requests  # noqa: F401
    import yaml  # noqa: F401

import gevent
from gevent import socket
from gevent.server import StreamServer

UPSTREAM = ("127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 8400)
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nTransfer-Encoding: chunked\r\n"
        b"X-Terminal-Mode: live\r\nConnection: close\r\n\r\n")
idle_upstreams: list[socket.socket] = []


def read_request(client: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        more = client.recv(65536)
        if not more:
            return b""
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    while len(body) < length:
        more = client.recv(65536)
        if not more:
            return b""
        body += more
    return body


def upstream_request(body: bytes) -> bytes:
    upstream_body = json.dumps({"model": "floor", "stream": True, **json.loads(body)}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(upstream_body), upstream_body))


def send(client: socket.socket, data: bytes) -> None:
    # As the service's worker does: one plain send, gevent's sendall only for what the kernel did not take.
    try:
        sent = client._sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        client.sendall(data[sent:])


def relay(upstream: socket.socket, client: socket.socket) -> bool:
    """Forward the reply's text; return whether the upstream connection can be reused."""
    # As the service's socket reader does: wait for the socket to be readable, then read it once.
    hub = gevent.get_hub()
    readable = hub.loop.io(upstream.fileno(), 1)  # 1: readable
    try:
        return _relay(hub, readable, upstream._sock, client)
    finally:
        readable.close()


def _relay(hub, readable, upstream, client) -> bool:
    buffer, head_done, sent_head = b"", False, False
    while True:
        hub.wait(readable)
        try:
            data = upstream.recv(65536)
        except BlockingIOError:
            continue
        if not data:
            return False
        buffer += data
        if not head_done:
            if b"\r\n\r\n" not in buffer:
                continue
            buffer = buffer.split(b"\r\n\r\n", 1)[1]
            head_done = True
        pieces, ended = [], False
        while True:  # whole HTTP chunks only; a partial one waits for the next read
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                break
            size = int(buffer[:line_end], 16)
            if size == 0:
                ended = True
                break
            if len(buffer) < line_end + 4 + size:
                break
            payload, buffer = buffer[line_end + 2:line_end + 2 + size], buffer[line_end + 4 + size:]
            for block in payload.split(b"\n\n"):
                if block.startswith(b"data: {"):
                    choices = json.loads(block[6:]).get("choices")
                    text = choices[0].get("delta", {}).get("content") if choices else None
                    if text:
                        pieces.append(text)
        if (pieces or ended) and not sent_head:
            send(client, HEAD)
            sent_head = True
        if pieces:
            text = "".join(pieces).encode()
            send(client, b"%X\r\n%s\r\n" % (len(text), text))
        if ended:
            send(client, b"0\r\n\r\n")
            return True


def handle(client: socket.socket, address) -> None:
    body = read_request(client)
    if not body:
        return
    upstream = idle_upstreams.pop() if idle_upstreams else socket.create_connection(UPSTREAM)
    try:
        upstream.sendall(upstream_request(body))
        reusable = relay(upstream, client)
    except OSError:
        reusable = False
    if reusable:
        idle_upstreams.append(upstream)
    else:
        upstream.close()
    client.close()


if __name__ == "__main__":
    gc.freeze()  # and collect young objects as rarely as the service does (gunicorn.conf.py)
    gc.set_threshold(10_000, 10, 10)
    StreamServer(("127.0.0.1", int(sys.argv[1])), handle, backlog=2048).serve_forever()
