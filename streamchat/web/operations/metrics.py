"""Prometheus metrics: counted when a reply ends, served at ``GET /metrics``.

Off unless ``METRICS_TOKEN`` is set: then ``create_app`` builds one ``Metrics``
per process and ``/metrics`` answers a scraper that sends
``Authorization: Bearer <METRICS_TOKEN>`` (compared in constant time).

Counting costs nothing per chunk: a reply is counted once, when it closes
(``Metrics.reply_finished`` is a ``Relay`` listener), from its ``ReplyRecord``;
every other request once, when its response closes.

Under gunicorn with several workers each worker writes its counts to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode; the
directory is made and emptied by ``gunicorn.conf.py``, which also drops a dead
worker's live gauges), and the worker that answers the scrape adds them all up:
one port, no exporter thread. Counters of a dead worker stay in its files, so
the totals survive a worker being replaced.

Names follow Prometheus' conventions; labels use the service's own words
(``live``/``fallback``, the ``X-Terminal-Reason`` slugs, provider names) and,
where they fit, OpenTelemetry's GenAI attribute names with dots as
underscores (``gen_ai_provider_name``, ``gen_ai_request_model``,
``gen_ai_token_type``).
"""

from __future__ import annotations

import hmac
import os
import time
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ...domain.record import CUT_SHORT, RESTARTING, ReplyRecord
from ...domain.relay import Relay
from ...shared.reply_cache import HIT, JOINED

PROVIDER, MODEL = "gen_ai_provider_name", "gen_ai_request_model"
TTFB_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 12, 20)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
BREAKER_UNTIL = "streamchat_circuit_breaker_open_until_timestamp_seconds"


def multiprocess_dir() -> str | None:
    """Return the directory the workers share their counts through, when gunicorn made one."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


_process_metrics: "Metrics | None" = None


def process_metrics() -> "Metrics":
    """Return this process's metrics, made on first use (prometheus_client's registry is per process)."""
    global _process_metrics
    if _process_metrics is None:
        _process_metrics = Metrics()
    return _process_metrics


class Metrics:
    """The service's metrics; one per process, from ``process_metrics()``."""

    def __init__(self) -> None:
        self._relays: list[Relay] = []
        self.requests = Counter("streamchat_requests", "HTTP requests answered, by route and status.",
                                ["endpoint", "status"])
        self.replies = Counter(
            "streamchat_replies", "Replies streamed, by how they were answered and how they ended. reason: the "
            "X-Terminal-Reason of a fallback reply, or what cut a live one short; 'none' otherwise.",
            ["endpoint", "mode", "reason", PROVIDER, "ended"])
        self.ttfb = Histogram("streamchat_time_to_first_byte_seconds",
                              "From the request's arrival to the reply's first text handed to the client.",
                              ["mode", PROVIDER], buckets=TTFB_BUCKETS)
        self.duration = Histogram("streamchat_reply_duration_seconds", "From the request's arrival to the reply's end.",
                                  ["mode", PROVIDER], buckets=DURATION_BUCKETS)
        self.open_streams = Gauge("streamchat_open_streams", "Replies streaming now.", multiprocess_mode="livesum")
        self.tokens = Counter(
            "streamchat_tokens", "Tokens of live replies, by type (input, output); estimated=\"true\" when the "
            "upstream reported no usage and they were estimated from characters.",
            [PROVIDER, MODEL, "gen_ai_token_type", "estimated"])
        self.upstream_failures = Counter(
            "streamchat_upstream_failures", "Provider failures: before the first text (the next provider or the "
            "rules answered) and after it (the reply was cut short), by X-Terminal-Reason slug.",
            [PROVIDER, "reason"])
        self.breaker_until = Gauge(BREAKER_UNTIL, "Unix time until which a worker skips the provider (0: never).",
                                   [PROVIDER], multiprocess_mode="livemax")
        self.keys_cooling = Gauge("streamchat_upstream_keys_cooling",
                                  "Keys of an upstream that are skipped now (rate-limited, spent or refused).",
                                  [PROVIDER], multiprocess_mode="livemax")
        self.hedges = Counter("streamchat_hedges", "Hedges started beside a slow upstream (LLM_HEDGE_AFTER), by the "
                              "hedge's upstream and whether it answered (won) or was closed (lost).",
                              [PROVIDER, "result"])
        self.warm_connections = Counter(
            "streamchat_upstream_warm_connections", "Upstream connections opened ahead of need (LLM_WARM_EVERY), by "
            "upstream and result (opened, failed).", [PROVIDER, "result"])
        self.reply_cache = Counter(
            "streamchat_reply_cache", "Questions the reply cache keeps (REPLY_CACHE_TTL), by result: hit (a complete "
            "answer), joined (an identical question in flight), miss (a model was asked).", ["endpoint", "result"])
        self.tokens_saved = Counter(
            "streamchat_reply_cache_saved_tokens", "Tokens hits and joins did not spend, by type: the original "
            "reply's usage.", ["gen_ai_token_type"])
        self.rate_limited = Counter("streamchat_rate_limited", "Requests refused with a 429 by the rate limit.",
                                    ["endpoint"])
        self.budget_denied = Counter("streamchat_budget_denied",
                                     "Replies the rules answered because a live-model budget was spent.", ["endpoint"])
        self.rules_reloads = Counter("streamchat_rules_reloads", "Rules file loads, by result (ok, error).",
                                     ["result"])
        self.resumes = Counter("streamchat_stream_resumes", "Recorded replies read again (GET /api/chat/streams/<id>).")
        self.stops = Counter("streamchat_stream_stops", "Stop requests for a reply still streaming.")

    # -- counting ---------------------------------------------------------------------------

    def watch(self, relay: Relay) -> None:
        """Count ``relay``'s replies as they end, its open streams, and its circuit breaker."""
        relay.listeners.append(self.reply_finished)
        relay.open_streams.observers.append(self.open_streams.set)
        self._relays.append(relay)

    def reply_finished(self, record: ReplyRecord) -> None:
        """Count one reply (a ``Relay`` listener): called once, when it closes."""
        endpoint = record.caller.endpoint if record.caller else "-"
        provider = record.provider or "-"
        reason = record.reason or record.cut_reason or "none"
        self.requests.labels(endpoint, str(record.caller.status if record.caller else 200)).inc()
        self.replies.labels(endpoint, record.mode, reason, provider, record.ended).inc()
        if record.first_byte_at is not None:
            self.ttfb.labels(record.mode, provider).observe(record.first_byte_at - record.started)
        if record.ended_at is not None:
            self.duration.labels(record.mode, provider).observe(record.ended_at - record.started)
        for failed, why in record.failures:  # "groq#2": the upstream, without the key's position
            self.upstream_failures.labels(failed.split("#", 1)[0], why).inc()
        if record.cache:
            self.reply_cache.labels(endpoint, record.cache).inc()
        if record.cache in (HIT, JOINED):  # the original reply spent (and counted) these
            self.tokens_saved.labels("input").inc(record.input_tokens)
            self.tokens_saved.labels("output").inc(record.output_tokens)
        elif record.mode == "live":
            if record.ended == CUT_SHORT and record.cut_reason != RESTARTING:
                self.upstream_failures.labels(provider, record.cut_reason).inc()
            estimated = "true" if record.tokens_estimated else "false"
            self.tokens.labels(provider, record.model, "input", estimated).inc(record.input_tokens)
            self.tokens.labels(provider, record.model, "output", estimated).inc(record.output_tokens)
        elif record.reason == "budget":
            self.budget_denied.labels(endpoint).inc()
        if record.hedge:
            self.hedges.labels(record.hedge, "won" if record.hedge_won else "lost").inc()
        if record.failures:
            self._note_breakers()

    def warm_connection(self, upstream: str, result: str) -> None:
        """Count a warm connection opened (or not) ahead of need: a ``WarmConnections`` observer."""
        self.warm_connections.labels(upstream, result).inc()

    def request_finished(self, endpoint: str, status: int) -> None:
        """Count a request that was not a streamed reply."""
        self.requests.labels(endpoint, str(status)).inc()
        if status == 429:
            self.rate_limited.labels(endpoint).inc()

    def rules_reloaded(self, ok: bool) -> None:
        self.rules_reloads.labels("ok" if ok else "error").inc()

    def _note_breakers(self) -> None:
        # The breaker keeps time on a monotonic clock; a scrape compares with the wall clock.
        now = time.time()
        for relay in self._relays:
            state = relay.breaker.state()
            for provider in relay.chain:
                entry = state.get(provider.name)
                self.breaker_until.labels(provider.name).set(now + float(entry["retry_in"]) if entry else 0)
                self.keys_cooling.labels(provider.name).set(relay.router.cooling_keys(provider))

    # -- exposing -----------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """Return every worker's metrics in the Prometheus text format."""
        self._note_breakers()  # this worker's view, fresh
        path = multiprocess_dir()
        if path is None:
            from prometheus_client import REGISTRY

            return generate_latest(_WithBreakerState(REGISTRY))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path)
        return generate_latest(_WithBreakerState(registry))


class _WithBreakerState:
    """A registry's metrics plus ``streamchat_circuit_breaker_open``: 1 while any live worker skips the provider.

    Worked out at scrape time from the workers' ``..._open_until_timestamp_seconds`` (their maximum),
    so a worker that has served nothing since its provider's cool-down ended is not read as stale.
    """

    def __init__(self, registry):
        self.registry = registry

    def collect(self) -> Iterator:
        now = time.time()
        state = GaugeMetricFamily("streamchat_circuit_breaker_open",
                                  "1 while some worker skips the provider for a cool-down, else 0.", labels=[PROVIDER])
        for metric in self.registry.collect():
            yield metric
            if metric.name == BREAKER_UNTIL:
                for sample in metric.samples:
                    state.add_metric([sample.labels[PROVIDER]], 1.0 if sample.value > now else 0.0)
        yield state


CONTENT_TYPE = CONTENT_TYPE_LATEST


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>``, compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
