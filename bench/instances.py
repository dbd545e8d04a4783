"""Scenarios across two instances sharing one Redis: resuming a reply elsewhere, and stopping it from elsewhere.

- ``resume``: 200 replies streamed from instance A hang up at a random chunk; each is resumed from the
  bytes received through instance B. Every resumed reply must add up to the whole reply; the figures
  are the resume's time to first byte and how many came out whole.
- ``stop``: 200 long replies stream from A; each is stopped through B. The figure is the time from
  sending the stop to the upstream seeing its connection closed (target: 100 ms p99).
- ``recording``: 1,000 streams through one worker with ``REDIS_URL``, recording off (``RESUME_TTL=0``)
  and on, twice in turn: what recording every reply in Redis costs the worker (target: 15% at most).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time

from bench.common import HOST, Service, get_json, message, ms, percentile
from streamchat.testing.processes import RedisServer
from bench.loadgen import StreamResult, build_request, concurrent_streams, one_stream

COUNT = 200
RESUME_GRACE = "30"  # long enough for every hung-up reply to be resumed


async def exchange(port: int, request: bytes) -> bytes:
    """Send one request (``Connection: close``) and return the whole answer."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        return await reader.read()
    finally:
        writer.close()


class Instances:
    def __init__(self, bench):
        self.bench = bench
        self.upstream = f"http://{HOST}:{bench.fake_port}/v1"

    def _pair(self, redis: RedisServer) -> tuple[Service, Service]:
        env = dict(OPENAI_BASE_URL=self.upstream, REDIS_URL=redis.url, RESUME_GRACE=RESUME_GRACE)
        a = Service(self.bench.logs, **env)
        try:
            return a, Service(self.bench.logs, **env)
        except Exception:
            a.stop()
            raise

    def _redis(self) -> RedisServer:
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is needed: ./run-tests installs it")
        return RedisServer(self.bench.logs)

    def resume(self) -> dict:
        count = 50 if self.bench.quick else COUNT
        rng = random.Random(19)
        plan = [rng.randint(2, 80) for _ in range(count)]
        redis = self._redis()
        a = b = None
        try:
            a, b = self._pair(redis)
            whole = asyncio.run(one_stream(HOST, a.port, self.bench.via_service(a, id="rw")(0)[1], "rw",
                                           direct=False, deadline=time.perf_counter() + 30))
            cut = asyncio.run(concurrent_streams(HOST, a.port, self.bench.via_service(a, id="rc"), count,
                                                 direct=False, ramp=2.0, deadline=time.perf_counter() + 60,
                                                 abort_after=plan.__getitem__))

            def make(n):
                r = cut[n]
                path = f"/api/chat/streams/{r.stream_id}?offset={r.payload_bytes}"
                return f"rr-{n}", build_request(HOST, b.port, path, None, method="GET")

            rest = asyncio.run(concurrent_streams(HOST, b.port, make, count, direct=False, ramp=1.0,
                                                  deadline=time.perf_counter() + 60))
        finally:
            for service in (a, b):
                if service:
                    service.stop()
            redis.stop()
        hung_up = [n for n in range(count) if cut[n].closed_at and cut[n].stream_id]
        whole_again = sum(1 for n in hung_up
                          if rest[n].status == 200 and cut[n].payload_bytes + rest[n].payload_bytes == whole.payload_bytes)
        return {"replies": count, "hung_up_with_an_id": len(hung_up), "resumed_whole": whole_again,
                "resume_ttfb_p50_ms": ms(percentile([rest[n].ttfb for n in hung_up], 50)),
                "resume_ttfb_p99_ms": ms(percentile([rest[n].ttfb for n in hung_up], 99)),
                "resume_errors": sum(1 for n in hung_up if not rest[n].ok)}

    def recording(self) -> dict:
        count = 200 if self.bench.quick else 1000
        redis = self._redis()
        figures: dict = {"streams": count}
        try:
            for turn in (1, 2):
                for mode, ttl in (("off", "0"), ("on", "600")):
                    service = Service(self.bench.logs, OPENAI_BASE_URL=self.upstream, REDIS_URL=redis.url,
                                      RESUME_TTL=ttl)
                    results, cpu, _, rss = self.bench.measured_load(service, count, f"rec-{mode}{turn}", 60)
                    figures.update({f"{mode}{turn}_completed": sum(r.ok for r in results),
                                    f"{mode}{turn}_cpu_s": round(cpu, 2), f"{mode}{turn}_peak_rss_mb": round(rss, 1)})
        finally:
            redis.stop()
        for turn in (1, 2):
            figures[f"on_vs_off_{turn}"] = round(figures[f"on{turn}_cpu_s"] / figures[f"off{turn}_cpu_s"], 3)
        figures["on_vs_off"] = round((figures["on1_cpu_s"] + figures["on2_cpu_s"]) /
                                     (figures["off1_cpu_s"] + figures["off2_cpu_s"]), 3)
        return figures

    def stop(self) -> dict:
        count = 50 if self.bench.quick else COUNT
        redis = self._redis()
        a = b = None
        try:
            a, b = self._pair(redis)
            sent_at, results = asyncio.run(self._stop_all(a, b, count))
            closes: dict = {}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                closes = get_json(f"http://{HOST}:{self.bench.fake_port}/_fake/stats")["closes"]
                if all(r.tag in closes for r in results):
                    break
                time.sleep(0.1)
        finally:
            for service in (a, b):
                if service:
                    service.stop()
            redis.stop()
        lags = [closes[r.tag] - sent_at[r.tag] for r in results if r.tag in closes and r.tag in sent_at]
        return {"replies": count, "stopped": len(sent_at), "upstream_closed": len(lags),
                "stop_to_upstream_closed_p50_ms": ms(percentile(lags, 50)),
                "stop_to_upstream_closed_p99_ms": ms(percentile(lags, 99)),
                "clean_ends": sum(1 for r in results if r.ok)}

    async def _stop_all(self, a: Service, b: Service, count: int):
        deadline = time.perf_counter() + 60
        results = [StreamResult(tag=f"st-{n}", started=time.perf_counter()) for n in range(count)]
        tasks = []
        for n, result in enumerate(results):
            body = message({"id": result.tag, "tokens": 2000, "interval_ms": 20})
            tasks.append(asyncio.ensure_future(one_stream(
                HOST, a.port, build_request(HOST, a.port, "/api/chat", body), result.tag, direct=False,
                deadline=deadline, result=result)))
            await asyncio.sleep(0.005)
        while not all(r.stream_id and r.payload_bytes for r in results) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        sent_at: dict[str, float] = {}
        for result in results:
            if not result.stream_id:
                continue
            stop = build_request(HOST, b.port, f"/api/chat/streams/{result.stream_id}/stop", None)
            sent_at[result.tag] = time.monotonic()
            await exchange(b.port, stop)
        await asyncio.gather(*tasks)
        return sent_at, results
