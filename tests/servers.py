"""Real processes for the tests: gunicorn with gevent workers, and a raw HTTP client."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from streamchat.config import SETTINGS

REPO = Path(__file__).resolve().parent.parent

# Variables a developer's shell may hold that must never reach a test server: every setting.
REAL_SETTINGS = tuple(setting.env for setting in SETTINGS) + ("PROMETHEUS_MULTIPROC_DIR",)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in REAL_SETTINGS}
    env.update(ENV_FILE="", HOST="127.0.0.1", PYTHONUNBUFFERED="1", CHAT_RATE_LIMIT="100000/minute",
               RULES_PATH=str(REPO / "rules.yaml"))
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class Gunicorn:
    """``wsgi:app`` under gunicorn with gevent workers on a loopback port, as the Procfile runs it."""

    def __init__(self, log_dir: Path, workers: int = 1, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"gunicorn-{self.port}.log"
        self.env = clean_env(PORT=str(self.port), WEB_CONCURRENCY=str(workers), **env)
        self.workers = workers
        self.process: subprocess.Popen | None = None

    def start(self) -> "Gunicorn":
        self._log_file = log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamchat.server.serve"],  # what the Procfile runs
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                status, _, _ = request(self.url, "GET", "/healthz", timeout=1)
                if status == 200 and self.log().count("providers:") >= self.workers:  # each worker, text or JSON logs
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn did not become ready:\n{self.log()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log_file", None):
            self._log_file.close()

    def kill(self) -> None:
        """Kill the master and its workers at once, as a crash or a lost machine would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_lines(self) -> list[str]:
        return [line for line in self.log().splitlines() if "streamchat.access" in line]

    def __enter__(self) -> "Gunicorn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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


def eventually(predicate, timeout: float = 10.0):
    """Poll ``predicate`` until it returns something truthy (bounded), and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


class Nginx:
    """A real nginx on a loopback port, balancing round-robin over ``backends`` as the README's deploy notes say."""

    def __init__(self, log_dir: Path, backends: list["Gunicorn"]):
        import shutil

        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = log_dir / f"nginx-{self.port}"
        self.dir.mkdir()
        servers = "".join(f"        server 127.0.0.1:{b.port};\n" for b in backends)
        (self.dir / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {self.dir}/access.log;
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    upstream streamchat {{
{servers}    }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://streamchat;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            gzip off;
            proxy_read_timeout 120s;
        }}
    }}
}}
""")
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Nginx":
        import os as _os

        if not _os.path.exists(self.binary):
            import pytest

            if _os.environ.get("CI"):
                pytest.fail("nginx is missing: ./run-tests installs it with apt-get")
            pytest.skip("nginx is not installed (./run-tests installs it)")
        self.process = subprocess.Popen([self.binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if request(self.url, "GET", "/healthz", timeout=1)[0] == 200:
                    return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("nginx did not start: " + (self.dir / "error.log").read_text())

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def upstreams_used(self) -> str:
        return (self.dir / "access.log").read_text()


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
