"""Real processes on loopback, for the tests and the benchmark alike: the service, redis-server and nginx.

``Gunicorn`` runs the service as the Procfile does (``python -m
streamchat.server.serve``), from this checkout or another one (the benchmark's
``--before``), with none of the developer's real settings in its environment.
``RedisServer`` and ``Nginx`` are the real servers with throwaway
configurations. A missing binary raises ``MissingComponent``, which the test
suite turns into a failure in CI and a skip elsewhere.

With ``STREAMCHAT_TEST_TIER=fast`` (``./run-tests --fast``) starting any of them
raises ``NotInFastTier``: a test that needs a real process belongs to the full
tier, and says so with the ``processes`` marker.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

from ..config import SETTINGS

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
#: Variables a developer's shell may hold that must never reach a server under test: every setting.
REAL_SETTINGS = tuple(setting.env for setting in SETTINGS) + ("PROMETHEUS_MULTIPROC_DIR",)
TIER_VARIABLE = "STREAMCHAT_TEST_TIER"

T = TypeVar("T")


class MissingComponent(RuntimeError):
    """A system program the tests need is not installed (``./run-tests`` installs it)."""


class NotInFastTier(RuntimeError):
    """A real process was started in the fast tier: the test needs the ``processes`` marker."""


def _allowed(what: str) -> None:
    if os.environ.get(TIER_VARIABLE) == "fast":
        raise NotInFastTier(f"{what} was started in the fast tier: mark the test with @pytest.mark.processes")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def eventually(predicate: Callable[[], T], timeout: float = 10.0) -> T:
    """Poll ``predicate`` until it returns something truthy (bounded), and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def wait_tcp(port: int, seconds: float = 30) -> None:
    """Return once something accepts connections on ``port`` (``RuntimeError`` after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port}")


def status_of(base: str, path: str, timeout: float = 1) -> int:
    """Return the status of ``GET path`` (``OSError`` if nothing answers)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def clean_env(**overrides: str) -> dict[str, str]:
    """Return this process's environment without any real setting, on loopback, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if k not in REAL_SETTINGS and k != TIER_VARIABLE}
    # REPLY_CACHE_TTL=0: tests and benchmark scenarios ask the same question again and again, each meant as
    # a model call; the reply cache's own tests and the bench's "suggestions" scenario turn it on.
    env.update(ENV_FILE="", HOST=HOST, PYTHONUNBUFFERED="1", CHAT_RATE_LIMIT="100000/minute",
               RULES_PATH=str(REPO / "rules.yaml"), REPLY_CACHE_TTL="0")
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def require(binary: str, fallback: str | None = None) -> str:
    """Return the path of ``binary`` (or ``fallback`` if it exists), else raise ``MissingComponent``."""
    found = shutil.which(binary) or (fallback if fallback and os.path.exists(fallback) else None)
    if found is None:
        raise MissingComponent(f"{binary} is missing: ./run-tests installs it with apt-get")
    return found


class Gunicorn:
    """The service under gunicorn with gevent workers on a loopback port, started as the Procfile starts it."""

    def __init__(self, log_dir: Path, workers: int = 1, root: Path = REPO, **env: str):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_dir / f"gunicorn-{self.port}.log"
        self.env = clean_env(PORT=str(self.port), WEB_CONCURRENCY=str(workers), **env)
        self.workers = workers
        self.root = root
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        """The master's process id (the launcher ``exec``s gunicorn: the same process)."""
        assert self.process is not None
        return self.process.pid

    def worker_pids(self) -> list[int]:
        return [int(pid) for pid in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()]

    def start(self) -> "Gunicorn":
        _allowed("gunicorn")
        self._log_file = log = open(self.log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "streamchat.server.serve"], cwd=self.root,
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                # Each worker logs its providers once its app is built, in text or JSON logs.
                if status_of(self.url, "/healthz") == 200 and self.log().count("providers:") >= self.workers:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gunicorn did not become ready:\n{self.log()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
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


class RedisServer:
    """A real redis-server on a free loopback port, with no persistence, started at once."""

    def __init__(self, directory: Path):
        _allowed("redis-server")
        self.binary, self.dir = require("redis-server"), directory
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}"
        self.start()

    def start(self) -> None:
        """Start (or start again, after ``stop``) on the same port, empty."""
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        if not eventually(self._answers, 10):
            self.stop()
            raise RuntimeError("redis-server did not start")

    def _answers(self) -> bool:
        try:
            return self.command(b"PING") == b"+PONG"
        except OSError:
            return False

    def command(self, *words: bytes) -> bytes:
        """Send one command and return its first reply line (enough for PING and FLUSHALL)."""
        request = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
        with socket.create_connection((HOST, self.port), timeout=1) as sock:
            sock.sendall(request)
            return sock.recv(512).split(b"\r\n")[0]

    def client(self):
        import redis

        return redis.Redis(port=self.port, socket_connect_timeout=0.2)

    def flush(self) -> None:
        self.command(b"FLUSHALL")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Nginx:
    """A real nginx on a loopback port, balancing round-robin over ``backends`` as the deploy docs say."""

    def __init__(self, log_dir: Path, backends: list[Gunicorn]):
        self.binary = require("nginx", "/usr/sbin/nginx")
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.dir = log_dir / f"nginx-{self.port}"
        self.dir.mkdir()
        servers = "".join(f"        server {HOST}:{b.port};\n" for b in backends)
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
        listen {HOST}:{self.port};
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
        _allowed("nginx")
        self.process = subprocess.Popen([self.binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if status_of(self.url, "/healthz") == 200:
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
