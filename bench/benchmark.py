"""The streaming benchmark: the service under load, compared with the fake upstream reached directly.

Run it with ``bench/run`` (``--quick`` for a smoke run). It starts the fake
upstream and gunicorn (one gevent worker) on loopback, drives both with the
asynchronous load generator in ``bench/loadgen.py``, and writes
``BENCHMARKS.md`` and ``BENCHMARKS.json`` beside it. Every figure of the
service is also given against the same load sent straight to the fake upstream
in the same run: on a shared 2-core machine absolute times are noise, ratios
are not.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import ssl
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

from bench import markdown_render
from bench.abuse import Abuse, worktree
from bench.common import (HOST, ROOT, FloorProxy, Process, Proxy, Scraper, Service, free_port, get_json, message, ms,
                          peak_rss_mb, per_million, percentile, ratio, settled_sockets, status_mb, wait_http,
                          wait_tcp)
from bench.instances import Instances
from bench.gateways import Gateways
from bench.routing import Routing
from bench.insights import InsightsCost
from bench.suggestions import Suggestions
from bench.loadgen import build_request, concurrent_streams, looping_clients
from streamchat.testing.fake_upstream import OpenAIWire, sse_event, tokens_of

class Bench:
    def __init__(self, logs: Path, quick: bool):
        self.logs = logs
        self.quick = quick
        self.fake_port = free_port()
        env = dict(os.environ)
        self.fake = Process([sys.executable, "-m", "streamchat.testing.fake_upstream", "--port", str(self.fake_port),
                             "--first-token-ms", "200", "--interval-ms", "20", "--tokens", "100"], env,
                            logs / "fake.log")
        wait_http(f"http://{HOST}:{self.fake_port}/_fake/stats")
        self.results: dict = {}
        self.before: Path | None = None  # --before: an older revision's checkout, run in turn where supported

    def close(self) -> None:
        self.fake.stop()

    # -- request builders -----------------------------------------------------------------------

    def via_service(self, service: Proxy, **fake):
        def make(n):
            tag = f"{fake.get('id', 's')}-{n}"
            return tag, build_request(HOST, service.port, "/api/chat", message({**fake, "id": tag}))
        return make

    def direct(self, **fake):
        def make(n):
            tag = f"{fake.get('id', 'd')}-{n}"
            body = {"model": "bench", "stream": True, **message({**fake, "id": tag})}
            return tag, build_request(HOST, self.fake_port, "/v1/chat/completions", body)
        return make

    def run(self, coroutine):
        return asyncio.run(coroutine)

    # -- scenarios ------------------------------------------------------------------------------

    def one_client(self) -> dict:
        count = 10 if self.quick else 50
        service = Service(self.logs, OPENAI_BASE_URL=f"http://{HOST}:{self.fake_port}/v1")
        try:
            direct, proxied = self.in_turn_with_direct(service, "1p", count)
        finally:
            service.stop()
        # The floor runs as the service did, in turn with direct requests: three in a row would leave
        # each proxy idle twice as long between its requests, and its caches colder (see the README).
        floor = FloorProxy(self.logs, self.fake_port)
        try:
            floor_direct, floored = self.in_turn_with_direct(floor, "1f", count // 2)
        finally:
            floor.stop()
        figures = {"requests": count, "errors": sum(not r.ok for r in proxied),
                   "floor_requests": count // 2, "floor_errors": sum(not r.ok for r in floored)}
        for name, key in (("ttfb", "ttfb"), ("completion", "total")):
            for q in (50, 99):
                d = percentile([getattr(r, key) for r in direct], q)
                p = percentile([getattr(r, key) for r in proxied], q)
                figures[f"{name}_p{q}_direct_ms"] = ms(d)
                figures[f"{name}_p{q}_service_ms"] = ms(p)
                figures[f"{name}_p{q}_added_ms"] = ms(p - d) if p is not None and d is not None else None
                figures[f"{name}_p{q}_ratio"] = ratio(p, d)
                fd = percentile([getattr(r, key) for r in floor_direct], q)
                f = percentile([getattr(r, key) for r in floored], q)
                figures[f"floor_{name}_p{q}_added_ms"] = ms(f - fd) if f is not None and fd is not None else None
        return figures

    def in_turn_with_direct(self, proxy: Proxy, tag: str, count: int) -> tuple[list, list]:
        """Send ``count`` single requests straight to the upstream and through ``proxy``, in turn."""
        direct, proxied = [], []
        for _ in range(count):  # in turn, so drift on the machine hits both alike
            direct += self.one_stream(self.fake_port, self.direct(id=tag + "d"), direct=True)
            proxied += self.one_stream(proxy.port, self.via_service(proxy, id=tag))
        return direct, proxied

    def one_stream(self, port: int, make, direct: bool = False) -> list:
        return self.run(concurrent_streams(HOST, port, make, 1, direct=direct, ramp=0,
                                           deadline=time.perf_counter() + 30))

    def concurrent(self, count: int, floor: bool = False) -> dict:
        """``count`` streams through the service (and, with ``floor``, through the floor proxy), and direct."""
        deadline_seconds = 60
        direct = self.run(concurrent_streams(HOST, self.fake_port, self.direct(id=f"c{count}d"), count, direct=True,
                                             ramp=1.0, deadline=time.perf_counter() + deadline_seconds))
        # The direct run receives exactly what the upstream sends the service for the same streams.
        upstream_chunks = sum(r.chunks for r in direct)
        service = Service(self.logs, OPENAI_BASE_URL=f"http://{HOST}:{self.fake_port}/v1")
        proxied, cpu, idle_rss, rss = self.measured_load(service, count, f"c{count}p", deadline_seconds)
        chunks = sum(r.chunks for r in proxied)
        figures = {"streams": count, "completed": sum(r.ok for r in proxied),
                   "errors": sum(not r.ok for r in proxied), "direct_completed": sum(r.ok for r in direct),
                   "modes": sorted({r.mode for r in proxied}), "upstream_chunks": upstream_chunks,
                   "chunks_forwarded": chunks, "client_reads": sum(r.reads for r in proxied),
                   "service_cpu_s": round(cpu, 2),
                   "cpu_us_per_upstream_chunk": per_million(cpu, upstream_chunks),
                   "cpu_us_per_chunk": per_million(cpu, chunks),
                   "idle_rss_mb": round(idle_rss, 1), "peak_rss_mb": round(rss, 1)}
        for q in (50, 99):
            d = percentile([r.ttfb for r in direct], q)
            p = percentile([r.ttfb for r in proxied], q)
            figures.update({f"ttfb_p{q}_direct_ms": ms(d), f"ttfb_p{q}_service_ms": ms(p), f"ttfb_p{q}_ratio": ratio(p, d)})
        d_gap = percentile([r.max_gap for r in direct], 99)
        p_gap = percentile([r.max_gap for r in proxied], 99)
        figures.update({"largest_gap_p99_direct_ms": ms(d_gap), "largest_gap_p99_service_ms": ms(p_gap),
                        "largest_gap_p99_ratio": ratio(p_gap, d_gap)})
        errors = [r.error for r in proxied if r.error][:3]
        if errors:
            figures["sample_errors"] = errors
        if floor:
            floored, cpu, idle_rss, rss = self.measured_load(FloorProxy(self.logs, self.fake_port), count,
                                                             f"c{count}f", deadline_seconds)
            chunks = sum(r.chunks for r in floored)
            figures.update({"floor_completed": sum(r.ok for r in floored),
                            "floor_cpu_us_per_upstream_chunk": per_million(cpu, upstream_chunks),
                            "floor_cpu_us_per_chunk": per_million(cpu, chunks),
                            "floor_idle_rss_mb": round(idle_rss, 1), "floor_peak_rss_mb": round(rss, 1),
                            "peak_rss_over_floor_mb": round(figures["peak_rss_mb"] - rss, 1),
                            "floor_ttfb_p99_ratio": ratio(percentile([r.ttfb for r in floored], 99),
                                                          percentile([r.ttfb for r in direct], 99))})
        return figures

    def _tls_files(self) -> tuple[Path, Path, Path] | None:
        """A CA bundle (certifi's public CAs plus a throwaway one) and a certificate chain and key it issued."""
        try:
            import certifi
            import trustme
        except ImportError:
            return None
        ca, bundle, chain, key = trustme.CA(), self.logs / "tls-ca.pem", self.logs / "tls-chain.pem", self.logs / "tls-key.pem"
        issued = ca.issue_cert(HOST)
        # The public CAs requests trusts (certifi), plus this one, as a private CA is added in production:
        # the worker loads the bundle it would load for a hosted provider.
        bundle.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + ca.cert_pem.bytes())
        issued.private_key_pem.write_to_path(str(key))
        for n, blob in enumerate(issued.cert_chain_pems):
            blob.write_to_path(str(chain), append=n > 0)
        return bundle, chain, key

    def _tls_fake(self, chain: Path, key: Path, *options: str) -> tuple[Process, int]:
        port = free_port()
        fake = Process([sys.executable, "-m", "streamchat.testing.fake_upstream", "--port", str(port),
                        "--first-token-ms", "200", "--interval-ms", "20", "--tokens", "100", "--tls-cert", str(chain),
                        "--tls-key", str(key), *options], dict(os.environ), self.logs / "fake-tls.log")
        wait_tcp(port)
        return fake, port

    def tls(self) -> dict:
        """1,000 streams from an upstream speaking HTTPS, as every hosted provider does, and from plain HTTP, in turn.

        The upstreams are the same fake with the same pacing, so the difference is what TLS costs the worker:
        decrypting every record, on top of the handshake of each new pooled connection. With ``--before REV``
        that revision's service runs against the HTTPS upstream in turn too (``before``).
        """
        files = self._tls_files()
        if files is None:
            return {"skipped": "trustme is not installed (requirements-dev.txt)"}
        bundle, chain, key = files
        count = 200 if self.quick else 1000
        fake, port = self._tls_fake(chain, key)
        rounds = 1 if self.quick else 2
        figures: dict = {"streams": count, "rounds": rounds}
        upstreams = {"plain": (f"http://{HOST}:{self.fake_port}/v1", ROOT), "tls": (f"https://{HOST}:{port}/v1", ROOT)}
        if self.before:
            upstreams["before_tls"] = (f"https://{HOST}:{port}/v1", self.before)
        runs: dict[str, list] = {mode: [] for mode in upstreams}
        stats_url, context = f"https://{HOST}:{port}/_fake/stats", ssl.create_default_context(cafile=str(bundle))
        try:
            for turn in range(rounds):
                for mode, (upstream, root) in upstreams.items():
                    before = get_json(stats_url, context)
                    service = Service(self.logs, root, OPENAI_BASE_URL=upstream, REQUESTS_CA_BUNDLE=str(bundle))
                    results, cpu, _, rss = self.measured_load(service, count, f"tls-{mode}{turn}", 60)
                    after = get_json(stats_url, context)
                    runs[mode].append((results, cpu, rss, {k: after[k] - before[k] for k in ("handshakes", "resumed")}))
        finally:
            fake.stop()
        for mode, measured in runs.items():
            results = [r for run in measured for r in run[0]]
            figures.update({f"{mode}_completed": sum(r.ok for r in results) // rounds,
                            f"{mode}_live": sum(r.mode == "live" for r in results) // rounds,
                            f"{mode}_cpu_s": round(statistics.mean(run[1] for run in measured), 2),
                            f"{mode}_peak_rss_mb": round(max(run[2] for run in measured), 1),
                            f"{mode}_ttfb_p99_ms": ms(percentile([r.ttfb for r in results], 99))})
            if mode != "plain":  # how many of the worker's handshakes resumed a TLS session instead of a full one
                figures[f"{mode}_handshakes"] = sum(run[3]["handshakes"] for run in measured) // rounds
                figures[f"{mode}_resumed"] = sum(run[3]["resumed"] for run in measured) // rounds
        figures["tls_cpu_vs_plain"] = ratio(figures["tls_cpu_s"], figures["plain_cpu_s"])
        figures["tls_ttfb_p99_vs_plain"] = ratio(figures["tls_ttfb_p99_ms"], figures["plain_ttfb_p99_ms"])
        if self.before:
            figures["before_tls_cpu_vs_plain"] = ratio(figures["before_tls_cpu_s"], figures["plain_cpu_s"])
        return figures

    def quiet_spell(self) -> dict:
        """The first request after a quiet spell, from an HTTPS upstream that closes idle connections, warm or not.

        The fake holds each TLS handshake back 60 ms (the network's round trips to a provider) and closes a
        connection left idle 3 s (providers: about a minute); the worker looks every second (default: 15 s).
        Each round asks once, waits 4 s (longer than the upstream keeps the connection), asks again, then
        asks once more at once, on the connection just used: its time to first byte is the floor.
        """
        files = self._tls_files()
        if files is None:
            return {"skipped": "trustme is not installed (requirements-dev.txt)"}
        bundle, chain, key = files
        rounds = 2 if self.quick else 6
        fake, port = self._tls_fake(chain, key, "--tls-delay-ms", "60", "--idle-close-ms", "3000")
        upstream, figures = f"https://{HOST}:{port}/v1", {"rounds": rounds, "handshake_delay_ms": 60,
                                                          "upstream_idle_close_s": 3, "pause_s": 4, "warm_every_s": 1}
        try:
            for mode, every in (("warm", "1"), ("cold", "0")):
                service = Service(self.logs, OPENAI_BASE_URL=upstream, REQUESTS_CA_BUNDLE=str(bundle),
                                  LLM_WARM_EVERY=every)
                after_pause, on_warm = [], []
                try:
                    self.one_stream(service.port, self.via_service(service, id=f"q{mode}first"))
                    for n in range(rounds):
                        time.sleep(4)  # the quiet spell
                        after_pause += self.one_stream(service.port, self.via_service(service, id=f"q{mode}{n}"))
                        on_warm += self.one_stream(service.port, self.via_service(service, id=f"q{mode}{n}again"))
                finally:
                    service.stop()
                figures.update({f"{mode}_after_pause_ttfb_p50_ms": ms(percentile([r.ttfb for r in after_pause], 50)),
                                f"{mode}_after_pause_ttfb_max_ms": ms(max(r.ttfb or 0 for r in after_pause)),
                                f"{mode}_kept_connection_ttfb_p50_ms": ms(percentile([r.ttfb for r in on_warm], 50)),
                                f"{mode}_live": sum(r.mode == "live" for r in after_pause + on_warm)})
        finally:
            fake.stop()
        for mode in ("warm", "cold"):
            figures[f"{mode}_added_after_pause_ms"] = round(figures[f"{mode}_after_pause_ttfb_p50_ms"]
                                                            - figures[f"{mode}_kept_connection_ttfb_p50_ms"], 2)
        return figures

    def metrics(self) -> dict:
        """1,000 streams with metrics off and on (scraped every second, as a busy Prometheus would), in turn twice.

        With ``--before REV`` that revision's service runs in turn too (``before``, no metrics).
        """
        count = 200 if self.quick else 1000
        figures: dict = {"streams": count}
        upstream = f"http://{HOST}:{self.fake_port}/v1"
        modes = [("off", ROOT, ""), ("on", ROOT, "bench-metrics-token")]
        if self.before:
            modes.append(("before", self.before, ""))
        for turn in (1, 2):
            for mode, root, token in modes:
                service = Service(self.logs, root, OPENAI_BASE_URL=upstream, METRICS_TOKEN=token)
                scraper = Scraper(service.port, token) if token else None
                try:
                    results, cpu, _, _ = self.measured_load(service, count, f"met-{mode}{turn}", 60)
                finally:
                    if scraper:
                        scraper.stop()
                # The same streams each run, so the same upstream chunks: CPU seconds compare as CPU per chunk.
                figures.update({f"{mode}{turn}_completed": sum(r.ok for r in results), f"{mode}{turn}_cpu_s": round(cpu, 2)})
                if scraper:
                    figures[f"{mode}{turn}_scrapes"] = scraper.ok
        for turn in (1, 2):
            figures[f"on_vs_off_{turn}"] = ratio(figures[f"on{turn}_cpu_s"], figures[f"off{turn}_cpu_s"])
        figures["on_vs_off"] = ratio(figures["on1_cpu_s"] + figures["on2_cpu_s"], figures["off1_cpu_s"] + figures["off2_cpu_s"])
        if self.before:
            figures["off_vs_before"] = ratio(figures["off1_cpu_s"] + figures["off2_cpu_s"],
                                             figures["before1_cpu_s"] + figures["before2_cpu_s"])
        return figures

    def openai_api(self) -> dict:
        """1,000 streams through ``/v1/chat/completions`` and through ``/api/chat``, in turn twice: CPU per chunk."""
        count = 200 if self.quick else 1000
        key = "bench-service-key-0123456789"
        env = dict(OPENAI_BASE_URL=f"http://{HOST}:{self.fake_port}/v1", SERVICE_API_KEYS=key, API_RATE_LIMIT="off")
        figures = self.cpu_in_turn(count, {
            "chat": (env, lambda service, tag: self.via_service(service, id=tag)),
            "v1": (env, lambda service, tag: self.via_api(service, key, id=tag))})
        figures["v1_vs_chat"] = ratio(figures["v11_cpu_s"] + figures["v12_cpu_s"],
                                      figures["chat1_cpu_s"] + figures["chat2_cpu_s"])
        return figures

    def cpu_in_turn(self, count: int, modes: dict, turns: int = 2, alternate: bool = False) -> dict:
        """Run ``count`` streams through a new service per mode (``{mode: (env, make_for(service, tag))}``), the
        modes in turn, ``turns`` times: each run's completed and live streams and the worker's CPU seconds.

        ``alternate``: every other turn runs the modes in the reverse order, so that no mode always runs
        right after the same one (a run's place in the sequence can cost it several percent here)."""
        figures: dict = {"streams": count}
        for turn in range(1, turns + 1):
            order = list(modes.items())
            if alternate and turn % 2 == 0:
                order.reverse()
            for mode, (env, make_for) in order:
                service = Service(self.logs, **env)
                try:
                    cpu_before = service.cpu()
                    results = self.run(concurrent_streams(HOST, service.port, make_for(service, f"{mode}{turn}"),
                                                          count, direct=False, ramp=1.0,
                                                          deadline=time.perf_counter() + 90))
                    cpu = service.cpu() - cpu_before
                finally:
                    service.stop()
                # The same streams each run, so the same upstream chunks: CPU seconds compare as CPU per chunk.
                figures.update({f"{mode}{turn}_completed": sum(r.ok for r in results),
                                f"{mode}{turn}_live": sum(r.mode == "live" for r in results),
                                f"{mode}{turn}_cpu_s": round(cpu, 2)})
        return figures

    def ui_stream(self) -> dict:
        """1,000 streams as the AI SDK's UI message stream and as text/plain, in turn twice: CPU per chunk."""
        count = 200 if self.quick else 1000
        env = dict(OPENAI_BASE_URL=f"http://{HOST}:{self.fake_port}/v1")

        def via_ui(service, tag):
            def make(n):
                label = f"{tag}-{n}"
                return label, build_request(HOST, service.port, "/api/chat/ui", message({"id": label}))
            return make

        figures = self.cpu_in_turn(count, {"text": (env, lambda service, tag: self.via_service(service, id=tag)),
                                           "ui": (env, via_ui)})
        figures["ui_vs_text"] = ratio(figures["ui1_cpu_s"] + figures["ui2_cpu_s"],
                                      figures["text1_cpu_s"] + figures["text2_cpu_s"])
        return figures

    def via_api(self, service: Proxy, key: str, **fake):
        def make(n):
            tag = f"{fake.get('id', 'v')}-{n}"
            body = {"model": "bench", "stream": True, **message({**fake, "id": tag})}
            return tag, build_request(HOST, service.port, "/v1/chat/completions", body,
                                      headers={"Authorization": f"Bearer {key}"})
        return make

    def measured_load(self, proxy: Proxy, count: int, tag: str, seconds: float):
        """Send ``count`` streams through ``proxy``, then stop it; return the results, CPU s, idle and peak RSS MB."""
        try:
            idle_rss = status_mb(proxy.worker, "VmRSS")
            cpu_before = proxy.cpu()
            results = self.run(concurrent_streams(HOST, proxy.port, self.via_service(proxy, id=tag), count,
                                                  direct=False, ramp=1.0, deadline=time.perf_counter() + seconds))
            return results, proxy.cpu() - cpu_before, idle_rss, peak_rss_mb(proxy.worker)
        finally:
            proxy.stop()

    def bursts(self) -> dict:
        clients, seconds, tokens = 20, (3 if self.quick else 10), 1000
        fake = {"tokens": tokens, "interval_ms": 0, "first_token_ms": 0}
        token_list = tokens_of({"tokens": tokens})
        text_bytes = len("".join(token_list).encode())
        wire = OpenAIWire("bench")
        sse_bytes = sum(len(sse_event(*wire.token(t))) for t in token_list)
        direct = self.run(looping_clients(HOST, self.fake_port, self.direct(id="bd", **fake), clients, direct=True,
                                          seconds=seconds))
        service = Service(self.logs, OPENAI_BASE_URL=f"http://{HOST}:{self.fake_port}/v1")
        try:
            cpu_before = service.cpu()
            started = time.perf_counter()
            proxied = self.run(looping_clients(HOST, service.port, self.via_service(service, id="bp", **fake),
                                               clients, direct=False, seconds=seconds))
            elapsed = time.perf_counter() - started
            cpu = service.cpu() - cpu_before
        finally:
            service.stop()
        delivered = sum(r.payload_bytes for r in proxied) / (text_bytes / tokens)
        # The direct stream also carries the preamble and ending events: count token events only.
        direct_tokens = sum(r.payload_bytes for r in direct) / (sse_bytes / tokens)
        figures = {"clients": clients, "seconds": seconds, "requests": len(proxied),
                   "errors": sum(not r.ok for r in proxied),
                   "tokens_per_s": round(delivered / elapsed), "direct_tokens_per_s": round(direct_tokens / seconds),
                   "cpu_ms_per_1000_tokens": round(cpu / delivered * 1e6, 2) if delivered else None}
        for q in (50, 99):
            figures[f"ttfb_p{q}_service_ms"] = ms(percentile([r.ttfb for r in proxied], q))
            figures[f"ttfb_p{q}_direct_ms"] = ms(percentile([r.ttfb for r in direct], q))
        return figures

    def fallback(self) -> dict:
        count = 200
        service = Service(self.logs)  # no provider: the rules answer
        try:
            cpu_before = service.cpu()
            proxied = self.run(concurrent_streams(HOST, service.port, self.via_service(service, id="fb"), count,
                                                  direct=False, ramp=1.0, deadline=time.perf_counter() + 60))
            cpu = service.cpu() - cpu_before
            rss = peak_rss_mb(service.worker)
        finally:
            service.stop()
        chunks = sum(r.chunks for r in proxied)
        return {"streams": count, "completed": sum(r.ok for r in proxied), "errors": sum(not r.ok for r in proxied),
                "modes": sorted({r.mode for r in proxied}),
                "ttfb_p50_ms": ms(percentile([r.ttfb for r in proxied], 50)),
                "ttfb_p99_ms": ms(percentile([r.ttfb for r in proxied], 99)),
                "completion_p99_ms": ms(percentile([r.total for r in proxied], 99)),
                "cpu_us_per_chunk": per_million(cpu, chunks), "peak_rss_mb": round(rss, 1)}

    def aborts(self) -> dict:
        count = 200
        # How soon an abandoned reply's upstream is closed: with a resume grace it is kept that long on purpose.
        # Warm connections off: they open an idle upstream socket on their own schedule, and every socket of
        # the worker is counted here, to find a leak.
        service = Service(self.logs, OPENAI_BASE_URL=f"http://{HOST}:{self.fake_port}/v1", RESUME_GRACE="0",
                          LLM_WARM_EVERY="0")
        try:
            sockets_before = settled_sockets(service.worker, None)
            generating = self.via_service(service, id="ag")
            silent = self.via_service(service, id="as", fault="stall_after", after=1)

            def make(n):
                return (silent if n % 2 else generating)(n)

            # Generating streams hang up after 5 chunks, silent ones after their only token.
            results = self.run(concurrent_streams(HOST, service.port, make, count, direct=False, ramp=1.0,
                                                  deadline=time.perf_counter() + 60,
                                                  abort_after=lambda n: 1 if n % 2 else 5))
            closes = {}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                closes = get_json(f"http://{HOST}:{self.fake_port}/_fake/stats")["closes"]
                if all(r.tag in closes for r in results if r.closed_at):
                    break
                time.sleep(0.1)
            health = {}
            while time.monotonic() < deadline:
                health = get_json(f"http://{HOST}:{service.port}/healthz")
                if health["open_streams"] == 0:
                    break
                time.sleep(0.1)
            stats = get_json(f"http://{HOST}:{self.fake_port}/_fake/stats")
            # Every request's greenlet holds its client socket until it ends, and an upstream socket
            # stays open until its stream is closed: a leak of either keeps a socket open here.
            sockets_after = settled_sockets(service.worker, sockets_before)
        finally:
            service.stop()
        figures = {"streams": count, "hung_up": sum(1 for r in results if r.closed_at)}
        for kind, prefix in (("generating", "ag-"), ("silent", "as-")):
            lags = [closes[r.tag] - r.closed_at for r in results if r.closed_at and r.tag.startswith(prefix)
                    and r.tag in closes]
            missing = sum(1 for r in results if r.closed_at and r.tag.startswith(prefix) and r.tag not in closes)
            figures.update({f"{kind}_close_p50_ms": ms(percentile(lags, 50)),
                            f"{kind}_close_p99_ms": ms(percentile(lags, 99)), f"{kind}_never_closed": missing})
        figures["open_streams_after"] = health.get("open_streams")
        figures["upstream_requests_still_open"] = stats["open"]
        figures["worker_sockets_before"] = sockets_before
        figures["worker_sockets_after"] = sockets_after
        figures["worker_sockets_leaked"] = sockets_after - sockets_before
        return figures


TARGETS = [
    ("one_client", "ttfb_p50_added_ms", "<=", 1.0, "one client: added TTFB p50 ≤ 1 ms"),
    ("streams_200", "ttfb_p99_ratio", "<=", 1.05, "200 streams: TTFB p99 ≤ 1.05 × direct"),
    ("streams_1000", "completed", ">=", 1000, "1,000 streams: all complete"),
    ("streams_1000", "ttfb_p99_ratio", "<=", 2.0, "1,000 streams: TTFB p99 ≤ 2 × direct"),
    ("streams_1000", "cpu_us_per_upstream_chunk", "<=", 20.0, "1,000 streams: ≤ 20 µs CPU per upstream chunk"),
    ("streams_1000", "cpu_us_per_chunk", "<=", 20.0, "1,000 streams: ≤ 20 µs CPU per written chunk"),
    ("streams_1000", "peak_rss_mb", "<=", 60.0, "1,000 streams: peak RSS ≤ 60 MB"),
    ("bursts", "tokens_per_s", ">=", 250000, "bursts: ≥ 250,000 tokens/s"),
    ("bursts", "ttfb_p99_service_ms", "<=", 50.0, "bursts: TTFB p99 ≤ 50 ms"),
    ("aborts", "generating_close_p99_ms", "<=", 50.0, "aborts: upstream closed ≤ 50 ms p99 (generating)"),
    ("aborts", "silent_close_p99_ms", "<=", 50.0, "aborts: upstream closed ≤ 50 ms p99 (silent)"),
    ("aborts", "upstream_requests_still_open", "<=", 0, "aborts: no upstream request left open"),
    ("aborts", "worker_sockets_leaked", "<=", 0, "aborts: no socket left open in the worker"),
    ("soak", "cpu_per_request_last_vs_first", "<=", 1.2, "soak, a new address per request: CPU per request, "
                                                         "last window ≤ 1.2 × first"),
    ("slow_heads", "ttfb_p99_attacked_vs_idle", "<=", 2.0, "2,500 slow heads: normal TTFB p99 ≤ 2 × idle"),
    ("never_read", "client_connections_left", "<=", 0, "200 never-read clients: all let go, no connection left"),
    ("never_read", "upstream_requests_left_open", "<=", 0, "200 never-read clients: no upstream request left open"),
    ("random_aborts", "worker_fds_leaked", "<=", 0, "500 random aborts: file descriptors back to baseline "
                                                    "(pooled upstream connections apart)"),
    ("random_aborts", "upstream_requests_back_to_baseline", ">=", True, "500 random aborts: upstream requests "
                                                                          "back to baseline"),
    ("counting", "memory_cpu_vs_off", "<=", 1.1, "counting in memory: CPU ≤ 1.1 × off"),
    ("counting", "redis_cpu_vs_off", "<=", 1.1, "counting in Redis: CPU ≤ 1.1 × off"),
    ("resume", "resumed_whole", ">=", 200, "resume elsewhere: all 200 hung-up replies come out whole"),
    ("stop", "stop_to_upstream_closed_p99_ms", "<=", 100.0, "stop from another instance: upstream closed ≤ 100 ms p99"),
    ("recording", "on_vs_off", "<=", 1.15, "1,000 streams recorded in Redis: CPU ≤ 1.15 × recording off"),
    ("openai_api", "v1_vs_chat", "<=", 1.15, "1,000 streams through /v1/chat/completions: CPU per chunk ≤ 1.15 × "
                                              "/api/chat"),
    ("markdown", "last_vs_first", "<=", 1.2, "Markdown, 20,000 tokens in 5-token chunks: a chunk's render, last "
                                             "tenth ≤ 1.2 × first"),
    ("tls", "tls_live", ">=", 1000, "1,000 streams from an HTTPS upstream: all live"),
    ("streams_1000", "peak_rss_over_floor_mb", "<=", 20.0, "1,000 streams: peak RSS ≤ the floor's + 20 MB"),
    ("tls", "tls_cpu_vs_plain", "<=", 1.5, "1,000 streams from an HTTPS upstream: CPU ≤ 1.5 × plain HTTP"),
    ("quiet_spell", "warm_added_after_pause_ms", "<=", 20.0, "after a quiet spell, warm connections: first byte ≤ "
                                                            "20 ms later than on a kept connection (p50)"),
    ("gateways", "service_vs_best_cpu_1", "<=", 0.333, "gateways, 1 client: CPU per reply ≤ ⅓ of the best gateway's"),
    ("gateways", "service_vs_best_cpu_200", "<=", 0.333, "gateways, 200 streams: CPU per reply ≤ ⅓ of the best "
                                                         "gateway's"),
    ("gateways", "service_vs_best_cpu_1000", "<=", 0.333, "gateways, 1,000 streams: CPU per reply ≤ ⅓ of the best "
                                                           "gateway's"),
    ("gateways", "service_vs_best_added_ttfb_1", "<=", 0.2, "gateways, 1 client: added first-token time ≤ ⅕ of the "
                                                            "best gateway's"),
    ("gateways", "service_1000_completed", ">=", 1000, "gateways, 1,000 streams: every stream of the service complete"),
    ("metrics", "on_vs_off", "<=", 1.03, "1,000 streams, metrics on and scraped each second: CPU per chunk ≤ 1.03 × off"),
    ("routing", "routed_vs_single", "<=", 1.03, "1,000 streams through three weighted upstreams of two keys: CPU ≤ "
                                                "1.03 × one upstream"),
    ("ui_stream", "ui_vs_text", "<=", 1.15, "1,000 streams as the AI SDK's UI message stream: CPU per chunk ≤ 1.15 × "
                                            "text/plain"),
    ("suggestions", "on_upstream_calls", "<=", 3, "1,000 visitors asking one of three questions, 200 at once, reply "
                                                  "cache on: 3 upstream calls"),
    ("suggestions", "on_completed", ">=", 1000, "suggestions, reply cache on: every visitor's reply complete"),
    ("cache_miss", "redis_on_vs_off", "<=", 1.05, "1,000 streams, every one a reply-cache miss in Redis: CPU ≤ 1.05 × "
                                                  "cache off"),
    ("cache_miss", "memory_on_vs_off", "<=", 1.05, "1,000 streams, every one a reply-cache miss in memory: CPU ≤ "
                                                   "1.05 × cache off"),
    ("insights", "redis_on_vs_off", "<=", 1.05, "1,000 streams, insights kept in Redis: CPU ≤ 1.05 × insights off"),
    ("insights", "file_on_vs_off", "<=", 1.05, "1,000 streams, insights kept in a file: CPU ≤ 1.05 × insights off"),
]

ABUSE = ["soak", "slow_heads", "never_read", "random_aborts", "counting"]
BEFORE = ["soak", "counting", "metrics", "tls"]  # the scenarios that run --before's revision in turn
INSTANCES = ["resume", "stop", "recording"]  # two instances (or one) and one Redis


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = ["# Benchmarks", "",
             f"Run {meta['date']} on {meta['machine']} ({meta['cores']} cores), Python {meta['python']}, "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".", "",
             "One gunicorn gevent worker, its rate limit off (every stream comes from one address); the fake "
             "upstream and the load generator on the same machine, all on loopback. The upstream sends its first token after 200 ms, then 100 tokens 20 ms apart, unless "
             "stated. *Direct* is the same load sent straight to the fake upstream in the same run. CPU per "
             "upstream chunk is the worker's CPU time over the HTTP chunks the upstream sent it (the chunks the "
             "direct run received), a fixed amount of work; CPU per written chunk divides by the chunks it wrote "
             "(`chunks_forwarded`), fewer whenever one write carries the deltas of several upstream chunks, so "
             "both are shown against the one target (`client_reads`: the reads that brought the written chunks). "
             "*Floor* is `bench/floor_proxy.py` under the same load in the same run: a gevent proxy with the "
             "service's libraries loaded but none of them used, that only forwards the text (no Flask, requests "
             "or gunicorn; no validation, timeouts, fallback, disconnect watch or log): the least these streams "
             "cost on this machine and runtime. Regenerate with `bench/run`. The soak and abuse scenarios "
             "(`bench/run --abuse`, described in the README) give every client its own loopback address; "
             + ("figures prefixed `before_` (and `before` runs) are an older revision of the service, named in "
                "the section's title, run in turn with this one (`--before`). " if meta.get("before") else "")
             + "Each section says when it was measured.", "", "## Targets", "",
             "| Target | Measured | Met | Floor |", "|---|---|---|---|"]
    for scenario, key, op, limit, label in TARGETS:
        value = results.get(scenario, {}).get(key)
        met = value is not None and (value <= limit if op == "<=" else value >= limit)
        floor = results.get(scenario, {}).get(f"floor_{key}", "–")
        lines.append(f"| {label} | {value} | {'yes' if met else '**no**'} | {floor} |")
    measured = meta.get("measured", {})
    for scenario, figures in results.items():
        if scenario == "meta":
            continue
        when = f" ({measured[scenario]})" if scenario in measured else ""
        if scenario in meta.get("before", {}):
            when += f", before = {meta['before'][scenario]}"
        lines += ["", f"## {scenario.replace('_', ' ')}{when}", "", "| Figure | Value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in figures.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke test)")
    parser.add_argument("--only", help="comma-separated scenarios: one_client,streams_200,streams_1000,bursts,"
                                       "fallback,aborts,metrics,openai_api,markdown,tls,quiet_spell,routing,hedge,suggestions,cache_miss,insights,ui_stream,gateways, and the soak, abuse and two-instance ones: " + ",".join(ABUSE + INSTANCES))
    parser.add_argument("--abuse", action="store_true",
                        help="run the soak, abuse and two-instance scenarios (about 15 minutes, 20 with --before)")
    parser.add_argument("--gateways", action="store_true",
                        help="run LiteLLM's proxy and Portkey's gateway beside the service's /v1 (installs them, "
                             "pinned, into bench/.gateways the first time; about 10 minutes)")
    parser.add_argument("--before", metavar="REV", help="also run REV's service in turn, in soak, counting and metrics")
    parser.add_argument("--out", help="the report (default BENCHMARKS.md; with --quick bench/logs/QUICK.md, so a "
                                      "smoke run never replaces the recorded figures)")
    args = parser.parse_args()
    args.out = args.out or str(ROOT / ("bench/logs/QUICK.md" if args.quick else "BENCHMARKS.md"))
    logs = ROOT / "bench" / "logs"
    logs.mkdir(exist_ok=True)
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.machine())
    results: dict = {"meta": {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": cpu_model, "cores": os.cpu_count(), "python": platform.python_version(),
        "versions": {name: metadata.version(name) for name in ("gunicorn", "gevent", "flask", "requests")},
        "quick": args.quick}}
    bench = Bench(logs, args.quick)

    bench.before = worktree(args.before) if args.before else None
    abuse = Abuse(bench, bench.before)
    scenarios = {"one_client": bench.one_client, "streams_200": lambda: bench.concurrent(200),
                 "streams_1000": lambda: bench.concurrent(1000, floor=True), "bursts": bench.bursts,
                 "fallback": bench.fallback, "aborts": bench.aborts, "metrics": bench.metrics,
                 "openai_api": bench.openai_api, "ui_stream": bench.ui_stream, "markdown": markdown_render.run,
                 "tls": bench.tls,
                 "quiet_spell": bench.quiet_spell, "gateways": Gateways(bench).gateways,
                 "routing": Routing(bench).routing, "hedge": Routing(bench).hedge,
                 "suggestions": Suggestions(bench).suggestions, "cache_miss": Suggestions(bench).cache_miss,
                 "insights": InsightsCost(bench).insights,
                 **{name: getattr(abuse, name) for name in ABUSE},
                 **{name: getattr(Instances(bench), name) for name in INSTANCES}}
    chosen = (args.only.split(",") if args.only else ABUSE + INSTANCES if args.abuse else ["gateways"] if args.gateways
              else [name for name in scenarios if name not in ABUSE + INSTANCES + ["gateways"]])
    out = Path(args.out)
    if out.with_suffix(".json").exists() and not args.quick:
        # Keep the scenarios not run this time, each with the date it was measured.
        earlier = json.loads(out.with_suffix(".json").read_text())
        results["meta"]["measured"] = {**{k: earlier["meta"]["date"] for k in earlier if k != "meta"},
                                       **earlier["meta"].get("measured", {})}
        results.update({k: v for k, v in earlier.items() if k != "meta" and k not in chosen})
        earlier_before = earlier["meta"].get("before", {})
        if isinstance(earlier_before, str):  # once one revision for every scenario that had one
            earlier_before = {name: earlier_before for name in BEFORE if name in earlier}
        results["meta"]["before"] = {k: v for k, v in earlier_before.items() if k not in chosen}
    if args.before:
        results["meta"].setdefault("before", {}).update({name: args.before for name in chosen if name in BEFORE})
    try:
        for name in chosen:
            started = time.monotonic()
            print(f"{name}...", file=sys.stderr, flush=True)
            results[name] = scenarios[name]()
            results["meta"].setdefault("measured", {})[name] = datetime.datetime.now(
                datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            print(f"  {json.dumps(results[name])} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    finally:
        bench.close()
    out.write_text(markdown(results))
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)


if __name__ == "__main__":
    main()
