"""The per-process service a request needs, and its one accessor: every module of the web layer calls ``service()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app

from ..config import Settings
from ..domain.relay import Relay
from ..shared.insights_store import InsightsStore
from ..shared.reply_cache import ReplyCache
from ..shared.streams import StreamRecords
from ..shared.token_budget import TokenBudgets

if TYPE_CHECKING:  # the guards and operations import this module: at run time it imports neither
    from .guards.limits import LiveBudget
    from .operations.metrics import Metrics

EXTENSION = "streamchat"


@dataclass
class Service:
    """Everything a request needs, built once per process by ``create_app``."""

    settings: Settings
    relay: Relay
    budget: LiveBudget
    streams: StreamRecords | None  # where replies are recorded for resuming; None with RESUME_TTL=0
    metrics: Metrics | None = None  # None unless METRICS_TOKEN is set
    tokens: TokenBudgets | None = None  # None unless a token budget is set
    cache: ReplyCache | None = None  # the reply cache; None with REPLY_CACHE_TTL=0
    insights: InsightsStore | None = None  # where each reply's insights entry goes; None with INSIGHTS_RETENTION_DAYS=0
    upstreams_fingerprint: str = ""  # the configured upstreams' names, models and prompts: part of a cache key
    widget_bundle: str | None = None  # /widget.js, built on its first request
    sign_ins: object | None = None  # /admin's failed sign-ins (guards.admin_session.SignInAttempts), on first use


def service() -> Service:
    """Return the current app's service."""
    return current_app.extensions[EXTENSION]
