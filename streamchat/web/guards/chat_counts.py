"""A chat request's counts in one round trip: its hard rate limits, its live-reply budgets and the cache's look.

Through flask-limiter a chat request cost two round trips to Redis: its hit of
``CHAT_RATE_LIMIT`` (one per limit of the string), then, once the body was
read, the budgets' (``LiveBudget``). At 1,000 streams that was 1.196 times the
CPU of counting nothing. A chat request now counts them all in one call to the
storage: each rate limit in order, stopping at the first one breached (a 429,
no budget spent), then every budget. In Redis that call is one script
(``failsoft.COUNT_TOGETHER``); in memory, the same steps in this worker
(``counters.ExpiringCounters``).

The count is taken once the body is parsed (``count_chat_now``, from the reply
path), so that the reply cache's look for the question rides on the same script
(``failsoft.COUNT_AND_LOOK``) when the counts and the cache share one Redis (the
default: ``RATELIMIT_STORAGE_URI`` is ``REDIS_URL``): a miss costs no round trip
of its own. A request whose body is refused (malformed, too large, too slow) is
counted all the same, before its error is answered (``counted_chat``): junk costs
the client what a real question costs, and a client past its limit gets its 429.

The budgets are spent before the reply is known to open: a request that opens
no reply (an error after the count) gets its budget units given back, a second
round trip only for such requests; so does a question the cache answers (a hit
or a join spends none). flask-limiter still declares and enforces every other
limit (resuming and stopping a reply, the ``/v1`` API), and the chat's answers
carry the same headers it would write: the breached limit's, else the first's.
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
    looked: list | None = None  # the reply cache's look, when it was made in the same call

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


def count_chat(who: str, look: tuple[list, list] | None = None) -> ChatCount | None:
    """Count one chat request of ``who`` against the rate limits, then (if none is breached) the budgets.

    ``look``: the reply cache's look (``RedisReplyCache.look_call``), to make in the same call when the storage
    can (its reply in ``ChatCount.looked``).
    """
    svc = service()
    rate = _items(svc.settings.chat_rate_limit)
    budget = svc.budget
    spending = [(item, item.key_for("budget", "client", who)) for item in budget.per_client] + \
               [(item, item.key_for("budget", "global")) for item in budget.overall]
    if not rate and not spending:
        return None
    storage = budget.counting_storage()
    limits = [(item, item.key_for("chat", who)) for item in rate]
    counted_limits = [(key, item.get_expiry(), item.amount) for item, key in limits]
    counted_spends = [(key, item.get_expiry()) for item, key in spending]
    looked = None
    try:
        if look is not None and hasattr(storage, "count_and_look"):
            counts, looked = storage.count_and_look(counted_limits, counted_spends, look)
        else:
            counts = storage.count_together(counted_limits, counted_spends)
    except Exception as exc:  # counting must never break the chat: count nothing and say so
        log.warning("chat counts unavailable, not enforced: %s", exc)
        return None
    result = ChatCount(limit=None, looked=looked)
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
    """Decorate the chat view: its request is counted once (``count_chat_now``), even when its body is refused."""

    @functools.wraps(view)
    def chat_view(*args, **kwargs):
        g.chat_count_due = True
        try:
            return view(*args, **kwargs)
        except Exception:
            count_chat_now()  # a refused body counts too, and past a limit the answer is the 429
            raise
        finally:
            count = g.get("chat_count")
            if count is not None and count.spent:  # no reply took the budget: it is given back
                service().budget.counting_storage().give_back(count.spent)

    return chat_view


def count_chat_now(look: tuple[list, list] | None = None) -> ChatCount | None:
    """Count this chat request, if it is due (once): raise the 429 past a rate limit; return the count.

    ``look``: the reply cache's look, made in the same call where the storage can.
    """
    if not g.pop("chat_count_due", False):
        return None
    count = count_chat(client_id(), look)
    if count is None:
        return None
    g.rate_limit_headers = count
    if count.breached:
        raise ChatRateLimited(count)
    g.chat_count = count
    return count


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
