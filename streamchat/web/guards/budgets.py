"""The soft budgets: past them the rules answer instead of a model (``X-Terminal-Reason: budget``).

- ``LiveBudget`` counts live-model replies per client and overall
  (``LLM_BUDGET_PER_CLIENT``, ``LLM_BUDGET_GLOBAL``).
- Token budgets (``LLM_TOKEN_BUDGET_*``, ``shared.token_budget``): ``reserve_tokens``
  sets a reply's estimated tokens aside before any model is called (the rules
  answer when they do not fit), ``release_tokens`` gives them back when no reply
  opened, and ``token_settler``, a relay listener, settles them on what the reply
  used when it ends.

The client is whoever the reply path names: the peer address on ``/api/chat``,
the service key (or its end user) on ``/v1``.
"""

from __future__ import annotations

import logging

from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import STRATEGIES, RateLimiter

from ...config import Settings
from ...domain.record import ReplyRecord, TokenHold
from ...domain.usage import reservation_size
from ...shared.token_budget import TokenBudgets
from .chat_counts import counted_budget
from .limits import limiter, storage_config

log = logging.getLogger("streamchat")


class LiveBudget:
    """Count live-model replies per client and overall; past a budget, say why live is denied.

    With the rate limit on, budgets count in the limiter's storage; with it off, flask-limiter stays
    off (its request hooks cost 190-450 µs a request, measured in-process) and the budget counts in a
    storage of its own, built the same way.
    """

    def __init__(self, settings: Settings):
        self.per_client = parse_many(settings.llm_budget_per_client) if settings.llm_budget_per_client else []
        self.overall = parse_many(settings.llm_budget_global) if settings.llm_budget_global else []
        self._settings = settings
        self._own: RateLimiter | None = None

    def _strategy(self) -> RateLimiter:
        if limiter.enabled:
            return limiter.limiter
        if self._own is None:
            uri, options = storage_config(self._settings)
            self._own = STRATEGIES["fixed-window"](storage_from_string(uri, **options))
        return self._own

    def storage(self):
        """The storage the budget counts in (None when there is no budget)."""
        return self._strategy().storage if (self.per_client or self.overall) else None

    def counting_storage(self):
        """The storage the chat's rate limits and budgets count in together (``chat_counts``)."""
        return self._strategy().storage

    def live_denied(self, who: str) -> str | None:
        """Spend one unit of ``who``'s budgets, returning "budget" if one is exhausted (None otherwise).

        A chat request's budgets were spent with its rate limits (``chat_counts``): that verdict is taken.
        """
        if not (self.per_client or self.overall):
            return None
        verdict = counted_budget()
        if verdict is not False:
            return verdict
        try:
            storage = self._strategy().storage  # fail-soft: counts in memory while Redis is down
            # What limits' fixed-window hit does for each, in one round trip for them all.
            items = ([(item, item.key_for("budget", "client", who)) for item in self.per_client] +
                     [(item, item.key_for("budget", "global")) for item in self.overall])
            counts = storage.incr_many([(key, item.get_expiry(), 1) for item, key in items])
            allowed = all(count <= item.amount for (item, _), count in zip(items, counts))
        except Exception as exc:  # the budget must never break the chat: spend freely and say so
            log.warning("live budget unavailable, not enforced: %s", exc)
            return None
        return None if allowed else "budget"


def reserve_tokens(tokens: TokenBudgets | None, hold: TokenHold, who: str, messages: list[dict[str, str]],
                   settings: Settings, max_tokens: int | None, live_possible: bool) -> str | None:
    """Reserve the reply's tokens for ``who`` in ``hold``; return "budget" if they do not fit (None otherwise).

    Whatever happens, ``hold.remaining`` says what the client may still spend (the
    ``X-Token-Budget-Remaining`` header). A reply no model can write reserves nothing.
    """
    if tokens is None or not tokens.enabled:
        return None
    if not live_possible:
        hold.remaining = tokens.remaining(who)
        return None
    chars = sum(len(m["content"]) for m in messages) + len(settings.system_prompt or "")
    limit = min(max_tokens, settings.llm_max_tokens) if max_tokens else settings.llm_max_tokens
    hold.reservation, hold.remaining = tokens.reserve(who, reservation_size(chars, limit))
    return "budget" if hold.reservation is None else None


def token_settler(tokens: TokenBudgets):
    """Return the relay listener that settles each reply's reservation on the tokens it used."""

    def settle_tokens(record: ReplyRecord) -> None:
        live = record.mode == "live"
        reservation = record.tokens.reservation
        if reservation is not None:  # a fallback reply used nothing; a live one, its usage or estimate
            tokens.settle(reservation, record.input_tokens + record.output_tokens if live else 0)
        if record.tokens.hedge is not None:  # the request that lost the race was sent the prompt, and closed
            tokens.settle(record.tokens.hedge, record.input_tokens if live else 0)

    return settle_tokens


def release_tokens(tokens: TokenBudgets | None, hold: TokenHold) -> None:
    """Give back the reservations of a reply that never opened (the client left while the model was awaited)."""
    for reservation in (hold.reservation, hold.hedge):
        if tokens is not None and reservation is not None:
            tokens.settle(reservation, 0)


def hedge_reserver(tokens: TokenBudgets | None, hold: TokenHold, who: str, messages: list[dict[str, str]],
                   settings: Settings, max_tokens: int | None):
    """Return the relay's ``may_hedge``: reserve a hedge's tokens as for any call; False when they do not fit."""

    def may_hedge() -> bool:
        if tokens is None or not tokens.enabled:
            return True
        chars = sum(len(m["content"]) for m in messages) + len(settings.system_prompt or "")
        limit = min(max_tokens, settings.llm_max_tokens) if max_tokens else settings.llm_max_tokens
        hold.hedge, remaining = tokens.reserve(who, reservation_size(chars, limit))
        if hold.hedge is not None:
            hold.remaining = remaining
        return hold.hedge is not None

    return may_hedge
