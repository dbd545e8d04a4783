"""What keeping insights costs: the same 1,000 streams with ``INSIGHTS_RETENTION_DAYS`` off and on.

``insights``: 1,000 live streams of distinct questions, insights off and on, kept in Redis and in a
local file, in turn four times (every other turn in the reverse order): the worker's CPU for the same
streams, as the median of each turn's on/off ratio (target: at most 1.05). On: each reply's entry is
made as it closes (its question masked) and queued; a flusher writes the queue every quarter second.
"""

from __future__ import annotations

import shutil

from bench.common import HOST, on_vs_off
from streamchat.testing.processes import RedisServer

TURNS = 4


class InsightsCost:
    def __init__(self, bench):
        self.bench = bench

    def insights(self) -> dict:
        bench = self.bench
        count = 200 if bench.quick else 1000
        turns = 1 if bench.quick else TURNS  # a quick run only shows that it runs
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is needed: ./run-tests installs it")
        redis = RedisServer(bench.logs)
        kept = bench.logs / "insights-bench.jsonl"
        upstream = dict(OPENAI_BASE_URL=f"http://{HOST}:{bench.fake_port}/v1")
        streams = lambda service, tag: bench.via_service(service, id=f"insights-{tag}")  # noqa: E731 (distinct ids)
        on = dict(INSIGHTS_RETENTION_DAYS="30")
        try:
            figures = bench.cpu_in_turn(count, turns=turns, alternate=True, modes={
                "redis_off": (dict(upstream, REDIS_URL=redis.url), streams),
                "redis_on": (dict(upstream, REDIS_URL=redis.url, **on), streams),
                "file_off": (dict(upstream, INSIGHTS_PATH=str(kept)), streams),
                "file_on": (dict(upstream, INSIGHTS_PATH=str(kept), **on), streams)})
            figures["file_entries_written"] = kept.read_text().count("\n") if kept.exists() else 0
            figures["redis_entries_written"] = int(redis.command(b"XLEN", b"streamchat:insights").lstrip(b":"))
        finally:
            redis.stop()
            kept.unlink(missing_ok=True)
            kept.with_name(kept.name + ".lock").unlink(missing_ok=True)
        on_vs_off(figures, ("redis", "file"), turns)
        return figures
