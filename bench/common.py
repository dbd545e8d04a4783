"""What every benchmark scenario shares: the processes under test, how they are measured, and the figures' maths.

The service is started by the harness the tests use (``streamchat.testing.processes``); the floor
proxy and the fake upstream are processes of their own. CPU and memory are read from ``/proc``.
"""

from __future__ import annotations

import json
import statistics
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from streamchat.testing.processes import HOST, Gunicorn, free_port, wait_tcp

ROOT = Path(__file__).resolve().parent.parent

TICKS = os.sysconf("SC_CLK_TCK")
UPSTREAM = {"first_token_ms": 200, "interval_ms": 20, "tokens": 100}
#: The service as the benchmark runs it: no rate limit, room for every stream, only warnings logged.
SERVICE_DEFAULTS = dict(CHAT_RATE_LIMIT="off", WORKER_CONNECTIONS="5000", GUNICORN_LOG_LEVEL="warning",
                        LLM_FIRST_TOKEN_TIMEOUT="10", LLM_IDLE_TIMEOUT="10")


def wait_http(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def get_json(url: str, context: ssl.SSLContext | None = None):
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        return json.load(response)


class Process:
    """A child process in its own group, with CPU and memory read from /proc."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT):
        self.log = open(log, "wb")
        self.popen = subprocess.Popen(args, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self.log.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def status_mb(pid: int, field: str) -> float:
    """A memory figure of ``/proc/PID/status`` in MB: ``VmHWM`` (peak resident) or ``VmRSS`` (resident now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb(pid: int) -> float:
    return status_mb(pid, "VmHWM")


def open_sockets(pid: int) -> int:
    """Count the sockets ``pid`` holds open: listening, client and upstream connections."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:  # closed since the listing
            pass
    return count


def settled_sockets(pid: int, expected: int | None, seconds: float = 5) -> int:
    """Return the worker's open sockets once the count stops changing and is at most ``expected``.

    The last health check's connection may still be closing on the worker's side: look again,
    a bounded number of times, before calling what is left a leak.
    """
    return settled(lambda: open_sockets(pid), expected, seconds, every=0.1)


def settled(count, expected: int | None, seconds: float, every: float) -> int:
    """Return ``count()`` once it stops changing and is at most ``expected``, looking for ``seconds`` at most."""
    deadline = time.monotonic() + seconds
    value = count()
    while time.monotonic() < deadline:
        time.sleep(every)
        again = count()
        if again == value and (expected is None or again <= expected):
            break
        value = again
    return value


def worker_pid(master: int) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise RuntimeError("no gunicorn worker")


class Proxy:
    """A process under test: ``port`` to send streams to, ``worker`` the process to measure."""

    port: int
    worker: int
    process: Process

    def cpu(self) -> float:
        return cpu_seconds(self.worker)

    def stop(self) -> None:
        self.process.stop()


class Service(Proxy):
    """The service with one gevent worker, started by the harness the tests use (``root``: another checkout)."""

    def __init__(self, logs: Path, root: Path = ROOT, **env: str):
        self.process = Gunicorn(logs, root=root, **{**SERVICE_DEFAULTS, **env}).start()
        self.port = self.process.port
        self.worker = worker_pid(self.process.pid)


class FloorProxy(Proxy):
    """``floor_proxy.py`` with the service's libraries loaded: the least the same streams can cost here."""

    def __init__(self, logs: Path, upstream_port: int):
        self.port = free_port()
        self.process = Process([sys.executable, str(ROOT / "bench" / "floor_proxy.py"), str(self.port),
                                str(upstream_port), "--stack-imports"], dict(os.environ), logs / f"floor-{self.port}.log")
        wait_tcp(self.port)
        self.worker = self.process.popen.pid


class Scraper:
    """GET /metrics once a second in a thread, as Prometheus would, until ``stop()``; ``ok`` counts the 200s."""

    def __init__(self, port: int, token: str):
        self.ok = 0
        self._stop = threading.Event()
        self._url, self._token = f"http://{HOST}:{port}/metrics", token
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        request = urllib.request.Request(self._url, headers={"Authorization": f"Bearer {self._token}"})
        while not self._stop.wait(1.0):
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    response.read()
                    self.ok += response.status == 200
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def percentile(values, q):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


def ms(value):
    return None if value is None else round(value * 1000, 2)


def per_million(total, count):
    return round(total / count * 1e6, 1) if count else None


def ratio(a, b):
    return None if not a or not b else round(a / b, 3)


def on_vs_off(figures: dict, stores: tuple[str, ...], turns: int) -> None:
    """Add, per store, each turn's ``<store>_on`` / ``<store>_off`` CPU ratio (a ``cpu_in_turn`` run) and their
    median: on this shared machine one run of 1,000 streams varies by 10-15% from the next."""
    for store in stores:
        ratios = [ratio(figures[f"{store}_on{turn}_cpu_s"], figures[f"{store}_off{turn}_cpu_s"])
                  for turn in range(1, turns + 1)]
        figures[f"{store}_on_vs_off_each"] = ratios
        figures[f"{store}_on_vs_off"] = statistics.median(ratios)


def message(fake: dict) -> dict:
    return {"messages": [{"role": "user", "content": "bench\nfake: " + json.dumps(fake)}]}
