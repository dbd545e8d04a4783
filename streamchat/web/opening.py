"""The one path from a parsed request to a reply's first byte, for every API.

An API is a parser in front of this path and a framer behind it::

    surface (parse the body)  ->  ChatRequest
    open_reply(ChatRequest)   ->  OpenedReply       (this module: everything before the first byte)
    OpenedReply.stream(framer, content_type) / .whole(render, content_type)  ->  Response

``open_reply`` takes the steps every reply takes, in this order (``/v1``'s hard
rate limit, a decorator from ``guards.limits``, ran before the body was even
read):

1. the record: a ``ReplyRecord`` with the request's ``Caller`` and start time,
   and on ``/api/chat`` its count (``guards.chat_counts``: rate limits and
   live budgets, with the reply cache's look in the same call);
2. the reply cache (``answers``): a complete answer to the same question, or the
   same question's reply in flight, answers it now, spending nothing more; else
   the question is claimed, for others to follow this reply;
3. the live-model budget (``guards.budgets.LiveBudget``), unless the request
   asked for the rules;
4. the token reservation (``guards.budgets.reserve_tokens``), held in the
   record's ``TokenHold`` and released if no reply opens;
5. the client watch (``server.disconnect``): a client that leaves while the
   model is awaited ends the wait, except for a recorded reply, which
   outlives its client for ``RESUME_GRACE``;
6. the relay: the first provider that produces text in time (with ``LLM_HEDGE_AFTER``, the next one
   started beside a slow one, its tokens reserved by ``guards.budgets.hedge_reserver``), else the rules.

Adding a wire format touches only its parser (``surfaces``) and its framer
(``framing``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from flask import Response, g, request

from ..domain.providers.base import DEFAULT_OPTIONS, Options
from ..domain.record import ReplyRecord
from ..domain.relay import Reply
from ..domain.validation import Limits
from ..server.disconnect import watch_client
from ..shared.reply_cache import HIT, JOINED, MISS, Found
from ..shared.streams import StreamRecords
from .answers import AnswerTap, answered_reply, find_answer, new_claim_id, question_key
from .framing.recorded import recorded_response
from .framing.response import reply_response, whole_response
from .guards.budgets import hedge_reserver, release_tokens, reserve_tokens
from .guards.chat_counts import count_chat_now
from .operations.access import caller, request_started
from .service import service

#: X-Terminal-Reason of a reply the rules wrote because the request asked for them (``/v1``'s "rules" model).
RULES_REQUESTED = "requested"


@dataclass(frozen=True)
class ChatRequest:
    """A request any API parsed: the conversation, its options, and who asks."""

    messages: list[dict[str, str]]
    client: str  # who counts against the budgets: the peer address, or a service key (and its end user)
    options: Options = DEFAULT_OPTIONS
    service_key: str | None = None  # on /v1: the key's id, for the access line
    model: str | None = None  # a provider or model to try first (``/v1``'s "model")
    rules_requested: bool = False  # answer from the rules without trying a model
    resumable: bool = False  # the wire format can be recorded and read again (``X-Stream-Id``)
    api: str = "chat"  # which API asks: the reply cache keeps each one's answers apart
    fresh: bool = False  # the client asked for a new answer: the reply cache finds nothing (it keeps this one)


def chat_limits() -> Limits:
    """The conversation limits every parser checks (messages and characters)."""
    settings = service().settings
    return Limits(settings.chat_max_messages, settings.chat_max_chars)


def open_reply(asked: ChatRequest) -> OpenedReply:
    """Take every step before the first byte and return the reply, its mode decided."""
    svc = service()
    settings = svc.settings
    messages = asked.messages
    record = ReplyRecord(started=request_started(),
                         caller=caller(asked.service_key, messages[-1]["content"] if settings.log_user_text else None))
    if settings.insights_retention_days:
        record.question = messages[-1]["content"]
    records = svc.streams if asked.resumable else None
    grace = settings.resume_grace if records is not None else 0
    tap = None
    key = None if asked.rules_requested else question_key(
        svc.cache, svc.relay, settings, messages=messages, options=asked.options, model=asked.model,
        scope=f"{asked.api}:{asked.service_key or ''}", upstreams=svc.upstreams_fingerprint)
    found = _count_and_find(svc, asked, key)
    if found is not None:
        record.cache = MISS
        if found.kind in (HIT, JOINED):
            reply = answered_reply(svc.cache, found, record, svc.relay)
            if reply is not None:  # its live budget, counted with the rate limits, goes back (counted_chat)
                g.reply_record = record
                return OpenedReply(reply, records, grace, at_once=found.kind == HIT)
            record.cache = MISS  # the answer it joined broke before its first piece: this one asks on its own
        elif found.kind == MISS:
            tap = AnswerTap(svc.cache, key, found.answer_id)
    live_denied = RULES_REQUESTED if asked.rules_requested else svc.budget.live_denied(asked.client)
    live_possible = live_denied is None and bool(svc.relay.chain)
    live_denied = reserve_tokens(svc.tokens, record.tokens, asked.client, messages, settings,
                                 asked.options.max_tokens, live_possible) or live_denied
    # With a grace period the reply outlives its client, so a client that leaves must not end it at once.
    watch = watch_client(request.environ) if not grace else None
    prefer = next((p.name for p in svc.relay.chain if asked.model in (p.model, p.name)), None) if asked.model else None
    may_hedge = hedge_reserver(svc.tokens, record.tokens, asked.client, messages, settings,
                               asked.options.max_tokens) if settings.llm_hedge_after else None
    try:
        reply = svc.relay.open(messages, on_close=watch.stop if watch else None, live_denied=live_denied,
                               record=record, options=asked.options, prefer=prefer, may_hedge=may_hedge)
    except BaseException:
        release_tokens(svc.tokens, record.tokens)
        if tap is not None:
            svc.cache.release(tap.key, tap.answer_id)
        raise
    if tap is not None and record.mode == "live" and tap.start(record):
        reply.tap = tap
        if watch is not None:  # others may follow this reply: its client leaving must not end it at once
            watch.stop()
    elif tap is not None:  # the rules answered (or Redis went away): whoever waits for it asks on their own
        svc.cache.release(tap.key, tap.answer_id)
    g.reply_record = record  # the access log leaves this request to log_reply, when the reply closes
    return OpenedReply(reply, records, grace)


def _count_and_find(svc, asked: ChatRequest, key: str | None) -> Found | None:
    """Count the request (on ``/api/chat``; a 429 past a limit), then find its question's answer, or claim
    the question: None for a question the cache does not keep. The first look rides on the count's call
    where it can."""
    if key is None:
        count_chat_now()
        return None
    claim_id, pending_for = new_claim_id(), _longest_first_text(svc)
    look = svc.cache.look_call(key, claim_id, fresh=asked.fresh, pending_for=pending_for) \
        if _look_rides_on_count(svc) else None
    count = count_chat_now(look)
    looked = svc.cache.found(count.looked, claim_id) if count is not None and count.looked is not None else None
    return find_answer(svc.cache, key, claim_id, fresh=asked.fresh, pending_for=pending_for, found=looked)


def _in_one_write(framer: Callable[[Reply], Iterator[bytes]]) -> Callable[[Reply], Iterator[bytes]]:
    """Frame a reply whose text is all here as one write: the same bytes (each piece still its own SSE event
    or run of text), without a system call and a trip through the server per piece (a hit's 100 pieces
    cost the worker 2.2 ms in 100 writes)."""
    def framed(reply: Reply) -> Iterator[bytes]:
        body = b"".join(framer(reply))
        if body:
            yield body
    return framed


def _look_rides_on_count(svc) -> bool:
    """Whether the reply cache's look can be made in the chat's counting call: both in the same Redis."""
    settings = svc.settings
    return hasattr(svc.cache, "look_call") and settings.ratelimit_storage_uri == settings.redis_url


def _longest_first_text(svc) -> float:
    """Seconds a claimed question may wait for its model's first text before others stop waiting for it."""
    settings = svc.settings
    return settings.llm_connect_timeout + settings.llm_first_token_timeout * max(1, len(svc.relay.chain))


@dataclass
class OpenedReply:
    """A reply whose mode is decided, to be framed in a response."""

    reply: Reply
    records: StreamRecords | None  # where it is recorded as it streams; None: not recorded
    grace: float  # seconds it outlives its client, for the client to come back
    at_once: bool = False  # its text is all here (a hit): the framed pieces go out in one write

    def stream(self, framer: Callable[[Reply], Iterator[bytes]], content_type: str,
               extra: dict[str, str] | None = None, name: str = "") -> Response:
        """Return the response streaming the reply through ``framer``, recorded when the API is resumable.

        ``extra``: the wire format's own headers; ``name``: what its record can be found by (a chat id).
        """
        if self.at_once:
            framer = _in_one_write(framer)
        if self.records is None:
            return reply_response(self.reply, framer, content_type, extra)
        return recorded_response(self.reply, framer, content_type, self.records, self.grace, extra, name)

    def whole(self, render: Callable[[Reply, Iterator[str]], bytes], content_type: str) -> Response:
        """Return the response holding the whole reply, as ``render`` writes it."""
        return whole_response(self.reply, render, content_type)
