"""The per-process service a request needs, and its one accessor."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from ..config import Settings
from ..domain.relay import Relay
from ..shared.streams import MemoryStreams
from ..shared.token_budget import TokenBudgets
from .limits import LiveBudget
from .metrics import Metrics

EXTENSION = "streamchat"


@dataclass
class Service:
    """Everything a request needs, built once per process by ``create_app``."""

    settings: Settings
    relay: Relay
    budget: LiveBudget
    streams: MemoryStreams | None  # the stream records (shared.streams); None with RESUME_TTL=0
    metrics: Metrics | None = None  # None unless METRICS_TOKEN is set
    tokens: TokenBudgets | None = None  # None unless a token budget is set


def service() -> Service:
    """Return the current app's service."""
    return current_app.extensions[EXTENSION]
