"""Scenarios for named upstreams: what routing costs, and what hedged first tokens buy and cost.

- ``routing``: 1,000 streams through one upstream set by ``OPENAI_BASE_URL`` (as before named
  upstreams) and through an ``UPSTREAMS_PATH`` file of three upstreams in one tier, weighted, each with
  two keys, in turn twice: the worker's CPU for the same streams (target: routing at most 3% more).
- ``hedge``: 200 streams to an upstream whose first token takes 3 s on one request in five (200 ms
  otherwise), with a second upstream behind it answering in 200 ms; with hedging off and with
  ``LLM_HEDGE_AFTER=0.5``: time to first byte p50/p99, and what the hedges cost: the requests that lost
  the race, the prompt tokens they were sent and the reply tokens they wrote before being closed (from
  the fake upstream's own records).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import HOST, Service, get_json, message, ms, percentile, ratio
from bench.loadgen import build_request, concurrent_streams

ROUTED = """
upstreams:
{entries}
"""
ENTRY = """  - name: {name}
    protocol: openai
    base_url: http://{host}:{port}/v1
    model: bench
    api_keys: ["${{BENCH_KEY_A}}", "${{BENCH_KEY_B}}"]
    weight: {weight}
"""
HEDGED = """
upstreams:
  - name: slow
    protocol: anthropic
    base_url: http://{host}:{port}
    model: bench-slow
  - name: fast
    protocol: openai
    base_url: http://{host}:{port}/v1
    model: bench-fast
    tier: 2
"""
HEDGE_AFTER = "0.5"
SLOW_FIRST_TOKEN_MS = 3000


class Routing:
    def __init__(self, bench):
        self.bench = bench

    def _file(self, name: str, text: str) -> Path:
        path = self.bench.logs / name
        path.write_text(text)
        return path

    def _streams(self, service: Service, count: int, tag: str, directive=lambda n: {}) -> tuple[list, float]:
        def make(n):
            label = f"{tag}-{n}"
            return label, build_request(HOST, service.port, "/api/chat", message({**directive(n), "id": label}))

        cpu_before = service.cpu()
        results = self.bench.run(concurrent_streams(HOST, service.port, make, count, direct=False, ramp=1.0,
                                                    deadline=time.perf_counter() + 90))
        return results, service.cpu() - cpu_before

    def routing(self) -> dict:
        bench = self.bench
        count = 200 if bench.quick else 1000
        port = bench.fake_port
        entries = "".join(ENTRY.format(name=name, host=HOST, port=port, weight=weight)
                          for name, weight in (("one", 3), ("two", 2), ("three", 1)))
        routed = self._file("routing-upstreams.yaml", ROUTED.format(entries=entries))
        setups = {"single": dict(OPENAI_BASE_URL=f"http://{HOST}:{port}/v1"),
                  "routed": dict(UPSTREAMS_PATH=str(routed), BENCH_KEY_A="bench-key-a", BENCH_KEY_B="bench-key-b")}
        streams = lambda service, tag: bench.via_service(service, id=f"route-{tag}")  # noqa: E731
        figures = bench.cpu_in_turn(count, {mode: (env, streams) for mode, env in setups.items()})
        figures["routed_vs_single"] = ratio(figures["routed1_cpu_s"] + figures["routed2_cpu_s"],
                                            figures["single1_cpu_s"] + figures["single2_cpu_s"])
        return figures

    def hedge(self) -> dict:
        bench = self.bench
        count = 50 if bench.quick else 200
        hedged = self._file("hedge-upstreams.yaml", HEDGED.format(host=HOST, port=bench.fake_port))

        def directive(n):  # one request in five: the first upstream takes 3 s to its first token
            return {"anthropic": {"first_token_ms": SLOW_FIRST_TOKEN_MS}} if n % 5 == 0 else {}

        figures: dict = {"streams": count, "slow_share": 0.2, "slow_first_token_ms": SLOW_FIRST_TOKEN_MS,
                         "hedge_after_s": float(HEDGE_AFTER)}
        for mode, after in (("off", "0"), ("on", HEDGE_AFTER)):
            service = Service(bench.logs, UPSTREAMS_PATH=str(hedged), LLM_HEDGE_AFTER=after)
            try:
                results, cpu = self._streams(service, count, f"hedge-{mode}", directive)
            finally:
                service.stop()
            records = [r for r in get_json(f"http://{HOST}:{bench.fake_port}/_fake/requests")
                       if r["id"].startswith(f"hedge-{mode}-")]
            by_reply: dict[str, list] = {}
            for record in records:
                by_reply.setdefault(record["id"], []).append(record)
            # A hedged reply made two upstream requests; the one that wrote less lost, and is what hedging cost.
            losers = [min(pair, key=lambda r: r["tokens_sent"]) for pair in by_reply.values() if len(pair) == 2]
            figures.update({
                f"{mode}_completed": sum(r.ok for r in results), f"{mode}_live": sum(r.mode == "live" for r in results),
                f"{mode}_ttfb_p50_ms": ms(percentile([r.ttfb for r in results], 50)),
                f"{mode}_ttfb_p99_ms": ms(percentile([r.ttfb for r in results], 99)),
                f"{mode}_upstream_requests": len(records), f"{mode}_hedges": len(losers),
                f"{mode}_extra_prompt_tokens": sum(r["prompt_tokens"] for r in losers),
                f"{mode}_extra_reply_tokens": sum(r["tokens_sent"] for r in losers),
                f"{mode}_cpu_ms_per_reply": round(cpu / count * 1000, 2)})
        return figures
