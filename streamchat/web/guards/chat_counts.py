"""A chat request's counts in one round trip: its hard rate limits and its live-reply budgets together.

Through flask-limiter a chat request cost two round trips to Redis: its hit of
``CHAT_RATE_LIMIT`` (one per limit of the string), then, once the body was
read, the budgets' (``LiveBudget``). At 1,000 streams that was 1.196 times the
CPU of counting nothing. ``counted_chat`` counts them all in one call to the
storage, before the body is read, as flask-limiter did: each rate limit in
order, stopping at the first one breached (a 429, no budget spent), then every
budget. In Redis that call is one script (``failsoft.COUNT_TOGETHER``); in
memory, the same steps in this worker (``counters.ExpiringCounters``).

The budgets are thus spent before the request is known to be valid: a request
that opens no reply (a bad body, a 413) gets its budget units given back, a
second round trip only for such requests. flask-limiter still declares and
enforces every other limit (resuming and stopping a reply, the ``/v1`` API),
and the chat's answers carry the same headers it would write: the breached
limit's, else the first's.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field

from flask import Flask, g
from limits import RateLimitItem, parse_many
from werkzeug.exceptions import TooManyRequests

from ..service import service
from .limits import client_id

log = logging.getLogger("streamchat")


@dataclass
class ChatCount:
    """What one chat request's count found."""

    limit: RateLimitItem | None  # the limit its headers show: the one breached, else the first (None: none set)
    remaining: int = 0
    reset_at: float = 0.0  # when that limit's window ends (epoch seconds)
    breached: bool = False
    budget: str | None = None  # "budget" when a live-reply budget is spent
    spent: list[str] = field(default_factory=list)  # the budget keys counted, to give back if no reply opens

    def headers(self) -> dict[str, str]:
        if self.limit is None:
            return {}
        return {"X-RateLimit-Limit": str(self.limit.amount), "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Reset": str(int(self.reset_at))}


class ChatRateLimited(TooManyRequests):
    """Over ``CHAT_RATE_LIMIT``: the 429, with the breached limit's headers and ``Retry-After``."""

    def __init__(self, count: ChatCount):
        super().__init__(str(count.limit))
        self.count = count
        self.retry_after = max(1, int(count.reset_at - time.time()))

    def get_headers(self, environ=None, scope=None):
        return [*super().get_headers(environ, scope), *self.count.headers().items()]


@functools.lru_cache(maxsize=8)
def _items(limit: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(limit)) if limit else ()


def count_chat(who: str) -> ChatCount | None:
    """Count one chat request of ``who`` against the rate limits, then (if none is breached) the budgets."""
    svc = service()
    rate = _items(svc.settings.chat_rate_limit)
    budget = svc.budget
    spending = [(item, item.key_for("budget", "client", who)) for item in budget.per_client] + \
               [(item, item.key_for("budget", "global")) for item in budget.overall]
    if not rate and not spending:
        return None
    storage = budget.counting_storage()
    limits = [(item, item.key_for("chat", who)) for item in rate]
    try:
        counts = storage.count_together([(key, item.get_expiry(), item.amount) for item, key in limits],
                                        [(key, item.get_expiry()) for item, key in spending])
    except Exception as exc:  # counting must never break the chat: count nothing and say so
        log.warning("chat counts unavailable, not enforced: %s", exc)
        return None
    result = ChatCount(limit=None)
    for (item, _), (count, expires_at) in zip(limits, counts):
        if result.limit is None or count > item.amount:
            result.limit, result.remaining, result.reset_at = item, max(item.amount - count, 0), expires_at
        if count > item.amount:
            result.breached = True
            return result
    spent = counts[len(limits):]
    result.spent = [key for _, key in spending]
    if any(count > item.amount for (item, _), (count, _) in zip(spending, spent)):
        result.budget = "budget"
    return result


def counted_chat(view):
    """Decorate the chat view: count its request before the body is read, a 429 past a rate limit."""

    @functools.wraps(view)
    def chat_view(*args, **kwargs):
        count = count_chat(client_id())
        if count is None:
            return view(*args, **kwargs)
        if count.breached:
            raise ChatRateLimited(count)
        g.chat_count = g.rate_limit_headers = count
        try:
            return view(*args, **kwargs)
        finally:
            if count.spent and g.get("chat_count") is count:  # no reply opened: the budget is given back
                service().budget.counting_storage().give_back(count.spent)

    return chat_view


def _add_rate_limit_headers(response):
    # On every answer to a counted chat, its errors too, as flask-limiter writes them for the limits it counts.
    count = g.get("rate_limit_headers")
    if count is not None:
        response.headers.update(count.headers())
    return response


def init_app(app: Flask) -> None:
    app.after_request(_add_rate_limit_headers)


def counted_budget() -> str | None | bool:
    """The budget verdict this request's count already found ("budget" or None), taken once; False if none."""
    count = g.pop("chat_count", None)
    return False if count is None or not count.spent else count.budget
