"""The composition root: ``create_app()`` builds settings, providers, rules and relay, and wires the web layer."""

from __future__ import annotations

import functools
import logging
import os
from urllib.parse import urlsplit
from typing import Mapping, Sequence

from flask import Flask
from flask.sessions import NullSession, SessionInterface

from streamchat.config import SETTINGS, load_settings, no_provider_hint
from streamchat.domain import insights
from streamchat.domain.breaker import CircuitBreaker
from streamchat.domain.cache_key import upstreams_fingerprint
from streamchat.domain.providers import HTTPProvider, Provider, build_chain
from streamchat.domain.relay import Relay
from streamchat.domain.rules import SAMPLE_NOTE, RulesStore
from streamchat.redaction import remember_secrets
from streamchat.server.disconnect import interrupter
from streamchat.server.drain import DRAIN
from streamchat.shared import redis as shared_redis
from streamchat.shared.breaker import SharedBreaker
from streamchat.shared.insights_store import FileInsights, InsightsStore, RedisInsights
from streamchat.shared.memory_streams import MemoryStreams
from streamchat.shared.reply_cache import MemoryReplyCache, RedisReplyCache, ReplyCache
from streamchat.shared.redis_streams import RedisStreams
from streamchat.shared.streams import StreamRecords
from streamchat.shared.token_budget import TokenBudgets
from streamchat.transport.warm import WarmConnections, WarmTarget
from streamchat.web import errors
from streamchat.web.guards import budgets, chat_counts, headers, limits
from streamchat.web.operations import access, health
from streamchat.web.operations.metrics import Metrics, process_metrics
from streamchat.web.service import EXTENSION, Service
from streamchat.web.surfaces import admin, chat, openai, page, widget

log = logging.getLogger("streamchat")


def create_app(test_config: Mapping[str, str] | None = None, *, providers: Sequence[Provider] | None = None) -> Flask:
    """Create the app from the environment, overlaid with ``test_config`` (same variable names).

    ``providers`` replaces the chain the settings describe (tests pass in-process fakes).
    """
    settings = load_settings({**os.environ, **(test_config or {})})
    access.configure_logging(settings.log_format)
    secrets = [getattr(settings, s.attr) for s in SETTINGS if s.secret]  # never in a log line
    remember_secrets(*(value for secret in secrets for value in (secret if isinstance(secret, tuple) else (secret,))),
                     *(secret for upstream in settings.upstreams for secret in upstream.secrets),
                     *(urlsplit(url).password or "" for url in (settings.redis_url, settings.ratelimit_storage_uri)))
    app = Flask(__name__)
    app.session_interface = NoSessions()
    app.config["MAX_CONTENT_LENGTH"] = settings.chat_max_body_bytes
    app.json.sort_keys = False

    metrics = process_metrics() if settings.metrics_token else None
    rules = RulesStore(settings.rules_path, on_reload=functools.partial(_log_rules_reload, metrics=metrics))
    rules.current()
    chain = list(providers) if providers is not None else build_chain(settings)
    shared = shared_redis.connect(settings.redis_url, settings.redis_timeout) if settings.redis_url else None
    relay = Relay(chain, rules, _breaker(settings, shared), settings.fallback_word_delay,
                  hedge_after=settings.llm_hedge_after, interrupter=interrupter)
    relay.listeners.append(access.log_reply)
    warm = warm_connections(settings, relay)
    if metrics is not None:
        warm.observers.append(metrics.warm_connection)
    warm.start()
    if metrics is not None:
        metrics.watch(relay)
    streams = _stream_records(settings, shared)
    tokens = None
    if settings.llm_token_budget_per_client or settings.llm_token_budget_global:
        tokens = TokenBudgets(settings.llm_token_budget_per_client, settings.llm_token_budget_global, shared)
        relay.listeners.append(budgets.token_settler(tokens))
    cache = _reply_cache(settings, shared)
    kept = _insights_store(settings, shared)
    if kept is not None:
        relay.listeners.append(insights.keeper(kept.add))
        kept.start()  # its flusher also removes what is too old, on a quiet site too
    app.extensions[EXTENSION] = Service(settings=settings, relay=relay, budget=budgets.LiveBudget(settings),
                                        streams=streams, metrics=metrics, tokens=tokens, cache=cache, insights=kept,
                                        upstreams_fingerprint=upstreams_fingerprint(relay.chain))
    for records in (streams, cache and cache.answers, kept):
        if records is not None:
            DRAIN.exit_hooks.append(records.flush)  # the records' last writes, before the worker exits
    log.info("providers: %s", ", ".join(f"{p.name}({p.model})" for p in relay.chain) or no_provider_hint())
    log.info("insights: %s", f"kept {settings.insights_retention_days} days in {kept.where}" if kept else
             "off (INSIGHTS_RETENTION_DAYS=0): no question is stored")

    for surface in (page, chat, openai, widget, health, admin):
        app.register_blueprint(surface.bp)
    access.init_app(app)  # before the limiter's hooks: a request's clock starts first
    headers.init_app(app, settings)
    limits.init_app(app, settings)
    chat_counts.init_app(app)
    errors.init_app(app)
    return app


class NoSessions(SessionInterface):
    """Flask sessions, which the service never uses: one shared null session instead of one per request.

    Flask's own interface makes an empty ``NullSession`` (with its dict and callback) for every request,
    which a stream keeps to its end, and checks on every response whether to save it. A ``NullSession``
    refuses every write, so one can serve every request.
    """

    null = NullSession()

    def open_session(self, app: Flask, request) -> NullSession:
        return self.null

    def make_null_session(self, app: Flask) -> NullSession:
        return self.null

    def save_session(self, app: Flask, session, response) -> None:
        pass


def warm_connections(settings, relay: Relay) -> WarmConnections:
    """An idle connection kept ready for every upstream, while it is not cooling down and the worker not draining."""
    def may_open(name: str) -> bool:
        return not DRAIN.draining and relay.breaker.skip_reason(name) is None

    targets = [WarmTarget(p.name, p.session, p.base_url, functools.partial(may_open, p.name))
               for p in relay.chain if isinstance(p, HTTPProvider)]
    return WarmConnections(targets, settings.llm_warm_every, settings.llm_connect_timeout)


def _breaker(settings, shared) -> CircuitBreaker:
    """The circuit breaker: shared through Redis when ``REDIS_URL`` is set, else this process's own."""
    if shared is None:
        return CircuitBreaker(settings.llm_cooldown)
    breaker = SharedBreaker(settings.llm_cooldown, shared)
    breaker.listen()  # create_app runs in each worker (never preloaded): one listener per worker
    return breaker


def _stream_records(settings, shared) -> StreamRecords | None:
    """Where replies are recorded for resuming: Redis when ``REDIS_URL`` is set, else this process (or nowhere)."""
    if not settings.resume_ttl:
        return None
    if shared is None:
        return MemoryStreams(settings.resume_ttl)
    # While it streams a record lives as long as a reply may last, with its grace, and then the ttl.
    return RedisStreams(shared, settings.resume_ttl, timeout=settings.redis_timeout,
                        live_ttl=settings.llm_max_duration + settings.resume_grace + settings.resume_ttl)


def _reply_cache(settings, shared) -> ReplyCache | None:
    """The reply cache: in Redis when ``REDIS_URL`` is set, else this process's memory (or none)."""
    if not settings.reply_cache_ttl:
        return None
    if shared is None:
        return MemoryReplyCache(settings.reply_cache_ttl)
    return RedisReplyCache(shared, settings.reply_cache_ttl, timeout=settings.redis_timeout,
                           longest_reply=settings.llm_max_duration + settings.resume_grace)


def _insights_store(settings, shared) -> InsightsStore | None:
    """Where each reply's insights entry is kept: Redis when ``REDIS_URL`` is set, else a local file (or nowhere)."""
    if not settings.insights_retention_days:
        return None
    if shared is None:
        return FileInsights(settings.insights_path, settings.insights_retention_days, settings.insights_max_entries)
    return RedisInsights(shared, settings.redis_url, settings.insights_retention_days, settings.insights_max_entries)


def _log_rules_reload(store: RulesStore, metrics: Metrics | None) -> None:
    if metrics is not None:
        metrics.rules_reloaded(ok=not store.error)
    if store.error:
        log.error("rules file invalid, keeping the last good rules: %s", store.error)
    else:
        log.info("rules loaded from %s", store.path)
        rules = store.in_force
        if rules is not None and rules.sample:
            log.warning("%s: %s", store.path, SAMPLE_NOTE)

