"""Scenarios for the reply cache: what answers already paid for save, and what a miss costs.

- ``suggestions``: 1,000 visitors asking one of three questions (a page's suggestion buttons), 200 at
  once, with the cache off and on (in Redis, as with several instances): upstream calls, and time to
  first byte p50/p99 of live replies, hits and joins. The worker's CPU per reply is measured on runs
  of one kind each: 1,000 live replies (cache off), 200 visitors arriving together on three new
  questions (three calls, the rest joined), and 1,000 hits.
- ``cache_miss``: 1,000 streams of distinct questions (every one a miss: a look-up and claim, the
  answer written as it streams) with the cache off and on, in Redis and in memory, the chat's rate limit
  counted as by default (a limit no stream reaches: the look rides on its script), in turn four times:
  the worker's CPU for the same streams, as the median of each turn's on/off ratio (target: at most
  1.05), every other turn in the reverse order. On this shared machine one run of 1,000 streams varies
  by 10-15% from the next, and a run's place in the sequence shows: a sum of two turns in one order was
  no measure of a 5% cost.
"""

from __future__ import annotations

import shutil
import time

from bench.common import HOST, Service, get_json, message, ms, on_vs_off, percentile, ratio
from bench.loadgen import build_request, visitors
from streamchat.testing.processes import RedisServer

QUESTIONS = 3
AT_ONCE = 200
TURNS = 4


class Suggestions:
    def __init__(self, bench):
        self.bench = bench

    def _redis(self) -> RedisServer:
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is needed: ./run-tests installs it")
        return RedisServer(self.bench.logs)

    def _visit(self, service: Service, count: int, tag: str) -> tuple[list, float]:
        """``count`` visitors, ``AT_ONCE`` at a time, each asking question ``n % 3``; the results and CPU seconds."""
        def make(n):
            question = f"{tag}-q{n % QUESTIONS}"
            return question, build_request(HOST, service.port, "/api/chat", message({"id": question}))

        cpu_before = service.cpu()
        results = self.bench.run(visitors(HOST, service.port, make, count, at_once=min(AT_ONCE, count),
                                          deadline=time.perf_counter() + 120))
        return results, service.cpu() - cpu_before

    def _upstream_calls(self, tag: str) -> int:
        records = get_json(f"http://{HOST}:{self.bench.fake_port}/_fake/requests")
        return sum(1 for r in records if r["id"].startswith(f"{tag}-q"))

    def suggestions(self) -> dict:
        bench = self.bench
        count = 200 if bench.quick else 1000
        redis = self._redis()
        figures: dict = {"visitors": count, "questions": QUESTIONS, "at_once": AT_ONCE}
        try:
            env = dict(OPENAI_BASE_URL=f"http://{HOST}:{bench.fake_port}/v1", REDIS_URL=redis.url)
            service = Service(bench.logs, **env, REPLY_CACHE_TTL="0")
            try:
                off, off_cpu = self._visit(service, count, "sugg-off")
            finally:
                service.stop()
            service = Service(bench.logs, **env, REPLY_CACHE_TTL="3600")
            try:
                crowd, crowd_cpu = self._visit(service, AT_ONCE, "sugg-crowd")
                mixed, _ = self._visit(service, count, "sugg-on")
                # The answers' ends are written within the records' flush (50 ms): asked sooner, a question
                # follows its answer's last bytes (joined) rather than finding it complete.
                time.sleep(0.5)
                hits, hits_cpu = self._visit(service, count, "sugg-on")
            finally:
                service.stop()
        finally:
            redis.stop()
        figures.update({
            "off_completed": sum(r.ok for r in off), "off_upstream_calls": self._upstream_calls("sugg-off"),
            "on_completed": sum(r.ok for r in mixed), "on_upstream_calls": self._upstream_calls("sugg-on"),
            "on_hits": sum(r.cache == "hit" for r in mixed), "on_joined": sum(r.cache == "joined" for r in mixed),
            "on_misses": sum(r.cache == "miss" for r in mixed),
            "on_live": sum(r.mode == "live" for r in mixed)})
        kinds = {"live": [r for r in off if r.ok], **{kind: [r for r in mixed if r.ok and r.cache == kind]
                                                      for kind in ("miss", "joined", "hit")}}
        for kind, results in kinds.items():
            for q in (50, 99):
                figures[f"{kind}_ttfb_p{q}_ms"] = ms(percentile([r.ttfb for r in results], q))
        figures.update({
            "crowd_completed": sum(r.ok for r in crowd), "crowd_joined": sum(r.cache == "joined" for r in crowd),
            "crowd_upstream_calls": self._upstream_calls("sugg-crowd"),
            "hits_completed": sum(r.ok for r in hits), "hits_hit": sum(r.cache == "hit" for r in hits),
            "live_cpu_ms_per_reply": round(off_cpu / count * 1000, 2),
            "joined_cpu_ms_per_reply": round(crowd_cpu / AT_ONCE * 1000, 2),
            "hit_cpu_ms_per_reply": round(hits_cpu / count * 1000, 2)})
        figures["hit_cpu_vs_live"] = ratio(figures["hit_cpu_ms_per_reply"], figures["live_cpu_ms_per_reply"])
        figures["joined_cpu_vs_live"] = ratio(figures["joined_cpu_ms_per_reply"], figures["live_cpu_ms_per_reply"])
        return figures

    def cache_miss(self) -> dict:
        bench = self.bench
        count = 200 if bench.quick else 1000
        turns = 2 if bench.quick else TURNS
        redis = self._redis()
        upstream = f"http://{HOST}:{bench.fake_port}/v1"
        counted = dict(OPENAI_BASE_URL=upstream, CHAT_RATE_LIMIT="100000000/minute")
        streams = lambda service, tag: bench.via_service(service, id=f"miss-{tag}")  # noqa: E731 (distinct ids)
        try:
            figures = bench.cpu_in_turn(count, turns=turns, alternate=True, modes={
                "redis_off": (dict(counted, REDIS_URL=redis.url, REPLY_CACHE_TTL="0"), streams),
                "redis_on": (dict(counted, REDIS_URL=redis.url, REPLY_CACHE_TTL="3600"), streams),
                "memory_off": (dict(counted, REPLY_CACHE_TTL="0"), streams),
                "memory_on": (dict(counted, REPLY_CACHE_TTL="3600"), streams)})
        finally:
            redis.stop()
        on_vs_off(figures, ("redis", "memory"), turns)
        return figures
