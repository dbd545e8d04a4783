"""Soak and abuse scenarios: what a busy site and hostile clients do to one worker, each bounded.

- ``soak``: 500 looping clients for 5 minutes, every request from a new address, with the rate
  limit and both live budgets on; CPU per request in the last minute against the first.
- ``slow_heads``: 2,500 clients sending their request heads a byte every 2 s (reconnecting when cut),
  while normal clients stream; their time to first byte against the same clients on an idle worker.
- ``never_read``: 200 clients that ask for a long reply and never read it, while normal clients
  stream; how long until the worker lets them go, and that nothing is left open after.
- ``random_aborts``: 500 streams hung up at random points (half-sent request, head, any chunk);
  the worker's file descriptors and the upstream's open requests back to their baseline.
- ``counting``: 2,000 streams at about 1,000 at once with counting off, in memory, and in Redis
  (when ``redis-server`` is installed), each request from a new address.

Every client comes from its own loopback address where it matters (Linux routes all of 127.0.0.0/8
to this machine), so the worker sees as many clients as a public site would. With ``--before REV``
the soak and counting scenarios also run that revision's service, in turn with this one.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import os
import random
import shutil
import socket
import statistics
import subprocess
import time
from pathlib import Path

from bench.common import HOST, ROOT, Service, get_json, message, ms, percentile, ratio, settled
from streamchat.testing.processes import RedisServer
from bench.loadgen import build_request, concurrent_streams, looping_clients

SHORT_REPLY = {"tokens": 5, "interval_ms": 20, "first_token_ms": 50}
COUNTING_ON = {"CHAT_RATE_LIMIT": "300/day", "LLM_BUDGET_PER_CLIENT": "50/day", "LLM_BUDGET_GLOBAL": "5000/day"}
# The soak sends ~100,000 requests: a global budget they cannot exhaust, so every minute is as live as the first.
SOAK_COUNTING = {**COUNTING_ON, "LLM_BUDGET_GLOBAL": "10000000/day"}


def addresses():
    """Yield distinct loopback addresses: 127.1.0.1, 127.1.0.2, ... (16 million of them)."""
    for a in range(1, 255):
        for b in range(256):
            for c in range(1, 255):
                yield f"127.{a}.{b}.{c}"


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def client_connections(pid: int, port: int, remote: bool = False) -> int:
    """Count the connections ``pid`` holds on its listening ``port`` (``remote``: to a server on ``port``)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        state, inode = fields[3], fields[9]
        count += (remote_port if remote else local_port) == port and state != "0A" and inode in inodes  # 0A: listening
    return count


def settled_fds(pid: int, expected: int | None, seconds: float = 10) -> int:
    """Return ``pid``'s open file descriptors once the count is stable and at most ``expected``."""
    return settled(lambda: open_fds(pid), expected, seconds, every=0.2)


def wait_until(check, seconds: float) -> float | None:
    """Poll ``check`` every 100 ms for at most ``seconds``; return how long it took, or None."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def open_streams(service) -> int:
    return get_json(f"http://{HOST}:{service.port}/healthz")["open_streams"]


def upstream_open(bench) -> int:
    return get_json(f"http://{HOST}:{bench.fake_port}/_fake/stats")["open"]


def ttfbs(results) -> dict:
    return {"p50_ms": ms(percentile([r.ttfb for r in results], 50)),
            "p99_ms": ms(percentile([r.ttfb for r in results], 99)),
            "errors": sum(not r.ok for r in results)}


class Abuse:
    def __init__(self, bench, before: Path | None = None):
        self.bench = bench
        self.before = before  # another checkout's root, run in turn with this one
        self.upstream = f"http://{HOST}:{bench.fake_port}/v1"

    def roots(self) -> list[tuple[str, Path | None]]:
        return [("", ROOT)] + ([("before_", self.before)] if self.before else [])

    def sequential(self, service, count: int, tag: str) -> list:
        results = []
        for n in range(count):
            results += self.bench.one_stream(service.port, self.bench.via_service(service, id=f"{tag}{n}", **SHORT_REPLY))
        return results

    # -- 5 minutes of new addresses -------------------------------------------------------------

    def soak(self) -> dict:
        windows, seconds = (3, 20) if self.bench.quick else (5, 60)
        clients = 100 if self.bench.quick else 500
        figures = {"windows": windows, "window_s": seconds, "clients": clients,
                   **{f"service_{k}": v for k, v in SOAK_COUNTING.items()}}
        for prefix, root in self.roots():
            figures.update({prefix + k: v for k, v in self._soak(root, windows, seconds, clients).items()})
        return figures

    def _soak(self, root: Path, windows: int, seconds: int, clients: int) -> dict:
        service = Service(self.bench.logs, root, OPENAI_BASE_URL=self.upstream, WORKER_CONNECTIONS="10000",
                          **SOAK_COUNTING)
        sources = addresses()
        results: list = []
        samples: list[tuple[float, int]] = []

        async def run():
            async def sample():
                start = time.perf_counter()
                for window in range(windows + 1):
                    await asyncio.sleep(max(0.0, start + seconds * window - time.perf_counter()))
                    samples.append((service.cpu(), len(results)))

            sampler = asyncio.ensure_future(sample())
            await looping_clients(HOST, service.port, self.bench.via_service(service, id="soak", **SHORT_REPLY),
                                  clients, direct=False, seconds=seconds * windows, source=lambda: next(sources),
                                  results=results)
            await sampler

        try:
            asyncio.run(run())
        finally:
            service.stop()
        per_request = []
        per_second = []
        for (cpu_a, done_a), (cpu_b, done_b) in zip(samples, samples[1:]):
            per_request.append(round((cpu_b - cpu_a) / max(1, done_b - done_a) * 1000, 2))
            per_second.append(round((done_b - done_a) / seconds))
        statuses = collections.Counter(r.status for r in results)
        return {"requests": len(results), "statuses": dict(statuses), "errors": sum(not r.ok for r in results),
                "modes": dict(collections.Counter(r.mode for r in results)),
                "cpu_ms_per_request_by_window": per_request, "requests_per_s_by_window": per_second,
                "cpu_per_request_last_vs_first": ratio(per_request[-1], per_request[0]) if per_request else None}

    # -- slow request heads ----------------------------------------------------------------------

    def slow_heads(self) -> dict:
        slow = 500 if self.bench.quick else 2500
        normal = 10 if self.bench.quick else 40
        service = Service(self.bench.logs, OPENAI_BASE_URL=self.upstream, WORKER_CONNECTIONS="10000")
        # The trickling clients run in a process of their own: in this one, 2,500 of them waking at
        # once would delay the normal client's own reads and count as the worker's time to first byte.
        context = multiprocessing.get_context("spawn")
        ready, stop, report = context.Event(), context.Event(), context.Queue()
        tricklers = context.Process(target=trickle_heads, args=(service.port, slow, ready, stop, report), daemon=True)
        try:
            idle = self.sequential(service, normal, "idle")
            tricklers.start()
            ready.wait(30)
            attacked = []
            started = time.monotonic()
            # At least 15 s, longer than the worker's 10 s for a request head: the cut ones come back.
            while len(attacked) < normal or time.monotonic() - started < 15:
                attacked += self.sequential(service, 1, f"attacked{len(attacked)}-")
            stop.set()
            stats = report.get(timeout=30)
            tricklers.join(10)
        finally:
            if tricklers.is_alive():
                tricklers.kill()
            service.stop()
        stats = collections.Counter(stats)
        return {"slow_clients": slow, "normal_requests_attacked": len(attacked), "slow_connections_made": stats["made"],
                "slow_connections_cut_by_worker": stats["cut"], "slow_connect_failures": stats["refused"],
                "slow_open_when_normal_started": stats["open_at_start"],
                **{f"idle_ttfb_{k}": v for k, v in ttfbs(idle).items()},
                **{f"attacked_ttfb_{k}": v for k, v in ttfbs(attacked).items()},
                "ttfb_p99_attacked_vs_idle": ratio(percentile([r.ttfb for r in attacked], 99),
                                                   percentile([r.ttfb for r in idle], 99))}

    # -- clients that never read -----------------------------------------------------------------

    def never_read(self) -> dict:
        count = 50 if self.bench.quick else 200
        client_timeout = 20
        service = Service(self.bench.logs, OPENAI_BASE_URL=self.upstream, WORKER_CONNECTIONS="10000",
                          CLIENT_TIMEOUT=str(client_timeout))
        # More than the worker's socket send buffer (4 MB here) can hold, in few large events.
        long_reply = {"text": "x" * 4000, "repeat": 1500, "token_chars": 4000, "interval_ms": 0, "first_token_ms": 0}
        held = []
        try:
            upstream_before = upstream_open(self.bench)
            idle = self.sequential(service, 20, "nr-idle")
            for n in range(count):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect((HOST, service.port))
                sock.sendall(build_request(HOST, service.port, "/api/chat", message({**long_reply, "id": f"nr-{n}"})))
                held.append(sock)
            opened = time.monotonic()
            filled_s = self.quiet(service, 30)  # every buffer full: the worker waits on them, idle
            stuck = open_streams(service)
            busy = self.sequential(service, 20, "nr-busy")
            let_go = wait_until(lambda: open_streams(service) == 0, 3 * client_timeout)
            let_go_s = None if let_go is None else round(time.monotonic() - opened, 1)
            connections = wait_until(lambda: client_connections(service.worker, service.port) == 0, 10)
            left = client_connections(service.worker, service.port)
            wait_until(lambda: upstream_open(self.bench) <= upstream_before, 10)
            upstream_after = upstream_open(self.bench)
        finally:
            for sock in held:
                sock.close()
            service.stop()
        return {"clients": count, "reply_mb": 6, "client_timeout_s": client_timeout,
                "buffers_full_after_s": filled_s, "streams_held_then": stuck,
                "all_let_go_after_s": let_go_s, "client_connections_left": left,
                "connections_closed_within_10_s": connections is not None,
                **{f"idle_ttfb_{k}": v for k, v in ttfbs(idle).items()},
                **{f"held_ttfb_{k}": v for k, v in ttfbs(busy).items()},
                "ttfb_p99_held_vs_idle": ratio(percentile([r.ttfb for r in busy], 99),
                                               percentile([r.ttfb for r in idle], 99)),
                "upstream_requests_left_open": upstream_after - upstream_before}

    @staticmethod
    def quiet(service, seconds: float) -> float | None:
        """Wait until the worker used under 5% of a core for half a second; return how long that took."""
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            before = service.cpu()
            time.sleep(0.5)
            if service.cpu() - before < 0.025:
                return round(time.monotonic() - started, 1)
        return None

    # -- hang-ups at random points ---------------------------------------------------------------

    def random_aborts(self) -> dict:
        count = 100 if self.bench.quick else 500
        rng = random.Random(18)
        # A tenth hang up mid-request, a tenth on the head, the rest after 1-100 chunks (a reply has ~102).
        plan = [rng.choice([-1, 0]) if rng.random() < 0.2 else rng.randint(1, 100) for _ in range(count)]
        silent = {n for n in range(count) if rng.random() < 0.2}  # upstream stalls after 3 tokens
        service = Service(self.bench.logs, OPENAI_BASE_URL=self.upstream)
        try:
            fds_before = settled_fds(service.worker, None)
            pooled_before = client_connections(service.worker, self.bench.fake_port, remote=True)
            upstream_before = upstream_open(self.bench)
            generating = self.bench.via_service(service, id="ra")
            stalling = self.bench.via_service(service, id="rs", fault="stall_after", after=3)

            def make(n):
                return (stalling if n in silent else generating)(n)

            results = asyncio.run(concurrent_streams(HOST, service.port, make, count, direct=False, ramp=5.0,
                                                     deadline=time.perf_counter() + 60, abort_after=plan.__getitem__))
            streams_closed = wait_until(lambda: open_streams(service) == 0, 30) is not None
            upstream_closed = wait_until(lambda: upstream_open(self.bench) <= upstream_before, 30) is not None
            # Replies that went on after their hang-up (resume grace) return their upstream connection to the
            # pool, where it stays open for the next request: those are counted apart.
            pooled_after = client_connections(service.worker, self.bench.fake_port, remote=True)
            fds_after = settled_fds(service.worker, fds_before + pooled_after - pooled_before)
            pooled_after = client_connections(service.worker, self.bench.fake_port, remote=True)
            still_serves = self.sequential(service, 3, "ra-after")
        finally:
            service.stop()
        kinds = collections.Counter("mid-request" if p < 0 else "on the head" if p == 0 else "mid-reply" for p in plan)
        return {"streams": count, "hang_ups": dict(kinds), "stalling_upstreams": len(silent),
                "hung_up": sum(1 for r in results if r.closed_at), "open_streams_back_to_0": streams_closed,
                "upstream_requests_back_to_baseline": upstream_closed, "worker_fds_before": fds_before,
                "worker_fds_after": fds_after, "pooled_upstream_connections_after": pooled_after,
                "worker_fds_leaked": (fds_after - pooled_after) - (fds_before - pooled_before),
                "served_afterwards": sum(r.ok for r in still_serves)}

    # -- what counting costs ---------------------------------------------------------------------

    def counting(self) -> dict:
        count, at_once = (400, 200) if self.bench.quick else (2000, 1000)
        stream_seconds = 2.2  # the fake's 200 ms to the first token, then 100 tokens 20 ms apart
        ramp = count / (at_once / stream_seconds)
        redis = RedisServer(self.bench.logs) if shutil.which("redis-server") else None
        modes = [("off", {}), ("memory", COUNTING_ON)]
        if redis:
            modes.append(("redis", {**COUNTING_ON, "RATELIMIT_STORAGE_URI": redis.url}))
        # A run's CPU varies by up to 5% from one run to the next on this VM: each figure is a mean of rounds.
        rounds = 1 if self.bench.quick else 3
        figures = {"streams": count, "about_at_once": at_once, "ramp_s": round(ramp, 1), "rounds": rounds,
                   "redis": "yes" if redis else "redis-server not installed"}
        runs = collections.defaultdict(list)
        try:
            for _ in range(rounds):
                for mode, env in modes:
                    for prefix, root in self.roots():  # in turn: drift on the machine hits both alike
                        if redis:
                            redis.flush()
                        runs[f"{prefix}{mode}"].append(self._counted(root, env, count, ramp))
        finally:
            if redis:
                redis.stop()
        for name, results in runs.items():
            figures[f"{name}_completed"] = sum(r["completed"] for r in results) // rounds
            figures[f"{name}_live"] = sum(r["live"] for r in results) // rounds
            figures[f"{name}_cpu_s"] = round(statistics.mean(r["cpu_s"] for r in results), 2)
            figures[f"{name}_ttfb_p99_ms"] = round(statistics.mean(r["ttfb_p99_ms"] for r in results), 2)
        for prefix, _ in self.roots():
            off = figures[f"{prefix}off_cpu_s"]
            for mode, _ in modes[1:]:
                figures[f"{prefix}{mode}_cpu_vs_off"] = ratio(figures[f"{prefix}{mode}_cpu_s"], off)
                figures[f"{prefix}{mode}_ttfb_p99_vs_off"] = ratio(figures[f"{prefix}{mode}_ttfb_p99_ms"],
                                                                   figures[f"{prefix}off_ttfb_p99_ms"])
        return figures

    def _counted(self, root: Path, env: dict, count: int, ramp: float) -> dict:
        service = Service(self.bench.logs, root, OPENAI_BASE_URL=self.upstream, **env)
        sources = addresses()
        try:
            cpu_before = service.cpu()
            results = asyncio.run(concurrent_streams(
                HOST, service.port, self.bench.via_service(service, id="count"), count, direct=False, ramp=ramp,
                deadline=time.perf_counter() + 90, source=lambda n: next(sources)))
            cpu = service.cpu() - cpu_before
        finally:
            service.stop()
        return {"completed": sum(r.ok for r in results), "live": sum(r.mode == "live" for r in results),
                "cpu_s": round(cpu, 2), "ttfb_p99_ms": ms(percentile([r.ttfb for r in results], 99))}


def trickle_heads(port: int, count: int, ready, stop, report) -> None:
    """In a child process: ``count`` clients send a request head a byte every 2 s, reconnecting when cut."""
    stats = collections.Counter()
    head = (f"POST /api/chat HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            "X-Padding: " + "a" * 4000).encode()

    async def trickle():
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                stats["refused"] += 1
                await asyncio.sleep(1)
                continue
            stats["made"] += 1
            stats["open"] += 1
            try:
                for at in range(len(head)):
                    if stop.is_set():
                        break
                    writer.write(head[at:at + 1])
                    try:
                        if not await asyncio.wait_for(reader.read(1024), timeout=2):
                            stats["cut"] += 1
                            break
                    except asyncio.TimeoutError:
                        pass
            except OSError:
                stats["cut"] += 1
            finally:
                stats["open"] -= 1
                writer.close()

    async def main():
        tasks = [asyncio.ensure_future(trickle()) for _ in range(count)]
        for _ in range(100):  # up to 10 s for every one to hold a connection
            if stats["open"] >= count:
                break
            await asyncio.sleep(0.1)
        stats["open_at_start"] = stats["open"]
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    report.put(dict(stats))


def worktree(rev: str) -> Path:
    """Check out ``rev`` beside the repository (once) for ``--before``; return its root."""
    path = Path("/tmp") / f"streamchat-before-{rev}"
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev], check=True,
                       stdout=subprocess.DEVNULL)
    return path
