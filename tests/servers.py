"""The tests' clients: a raw HTTP client, chunked framing, open streams, a relay whose connections can be cut."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

from streamchat.testing.processes import (REAL_SETTINGS, REPO, Gunicorn, Nginx, RedisServer, clean_env, eventually,
                                          free_port)

# The processes are the harness's (shared with bench/); what follows are the tests' own clients.
__all__ = ["REAL_SETTINGS", "REPO", "Gunicorn", "Nginx", "RedisServer", "clean_env", "eventually", "free_port",
           "request", "chat_body", "raw_exchange", "parse_chunked", "OpenStream", "TcpRelay"]


def request(base: str, method: str, path: str, body=None, headers=None, timeout: float = 15):
    """Send one request and return ``(status, headers, body bytes)``."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    data = json.dumps(body).encode() if body is not None and not isinstance(body, (bytes, str)) else body
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    try:
        conn.request(method, path, body=data, headers=hdrs)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def chat_body(prompt: str, **fake) -> dict:
    """A one-message conversation; keyword arguments become the fake upstream's directive."""
    content = prompt + (f"\nfake: {json.dumps(fake)}" if fake else "")
    return {"messages": [{"role": "user", "content": content}]}


def raw_exchange(base: str, body: dict, extra_headers: str = "", timeout: float = 15) -> bytes:
    """POST /api/chat over a bare socket and return every byte of the response, framing included."""
    host, port = base.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\n" + extra_headers.encode() +
                     b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def parse_chunked(raw: bytes) -> tuple[bytes, list[bytes], bool]:
    """Split a raw HTTP/1.1 response into (head, body chunks, ended with the terminating chunk)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    chunks = []
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return head, chunks, rest == b"\r\n"
        chunks.append(rest[:size])
        assert rest[size:size + 2] == b"\r\n", "chunk not followed by CRLF"
        rest = rest[size + 2:]
    return head, chunks, False


class OpenStream:
    """A chat request on a bare socket, read to its end in a thread; ``started`` once the first chunk came."""

    def __init__(self, base: str, tag: str, pacing: dict, extra_headers: bytes = b""):
        host, port = base.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        payload = json.dumps(chat_body(f"stream {tag}", id=tag, **pacing)).encode()
        self.sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n" + extra_headers +
                          b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
        self.raw = b""
        self.started = threading.Event()
        self.done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                self.raw += chunk
                if b"\r\n\r\n" in self.raw and len(self.raw.partition(b"\r\n\r\n")[2]) > 8:
                    self.started.set()
                if self.raw.endswith(b"\r\n0\r\n\r\n"):
                    break
        except OSError:
            pass  # closed by close(), or by a server that died
        finally:
            self.sock.close()
            self.done.set()

    def close(self) -> None:
        """Leave mid-reply, as a reader who closes the tab."""
        self.sock.shutdown(socket.SHUT_RDWR)
        self.done.wait(10)


class TcpRelay:
    """A loopback TCP relay in front of a server whose connections can be cut, as a lost network cuts them."""

    def __init__(self, target: "Gunicorn"):
        import threading

        self.target_port = target.port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.refuse_until = 0.0
        self.cuts = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, seconds: float) -> None:
        """Close every open connection, and refuse new ones for ``seconds``."""
        self.refuse_until = time.monotonic() + seconds
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.cuts += len(self._open)

    def close(self) -> None:
        self.cut(0)
        self.listener.close()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self.refuse_until:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                for sock in (source, sink):
                    if sock in self._open:
                        self._open.discard(sock)
                        sock.close()
