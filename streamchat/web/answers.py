"""Answers already paid for: the reply cache (a hit) and identical questions in flight (joined).

``open_reply`` asks ``find_answer`` first, before anything is spent. For a question
the cache keeps (``domain.cache_key``: at most ``REPLY_CACHE_TURNS`` user messages, a
live model configured), the look finds one of:

- a complete answer (``hit``): ``answered_reply`` streams its pieces at once, as the
  original's provider and model;
- an answer still streaming (``joined``): it is followed from its first piece, live,
  from any worker of any instance; its ending is the original's (a cut short one
  ends this reply cut short too);
- a claim whose model has not written yet: looked at again every ``LOOK_EVERY``
  seconds until its answer starts, or the claim goes (its reply fell back to the
  rules, perhaps for its own client's budget) and this request asks on its own;
- nothing: this request claims the question and calls the model; if the reply
  goes live, ``AnswerTap`` writes each piece to the answer for others to follow, and
  the answer is kept if the reply ends complete, for ``REPLY_CACHE_TTL`` seconds.

A hit or a join spends no tokens and no live-reply budget (its own count is given
back); the rate limits still count it. The reply that others follow is not its
own client's alone: its client's Stop or hang-up ends that client's response, and
the reply is carried on (``domain.relay.Reply.close``) while anyone follows it.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Iterator

from ..domain.cache_key import cache_key
from ..domain.record import COMPLETE, STOPPED, ReplyRecord
from ..domain.relay import Relay, Reply
from ..domain.usage import Usage, estimate_tokens
from ..errors import FollowedReplyBroke, ProviderError
from ..server.drain import DRAIN
from ..shared import streams
from ..shared.reply_cache import HIT, MISS, PENDING, Found, ReplyCache, pieces_of, text_of
from ..shared.streams import ProducerGone, RecordsUnavailable, UnknownStream

LOOK_EVERY = 0.05  # seconds between looks while the question's claimant waits for its model's first text
FOLLOWED_WITHIN = 2 * streams.FOLLOW_WAKE  # a follower looks at least this often while it follows


def question_key(cache: ReplyCache | None, relay: Relay, settings, *, messages, options, scope: str,
                 model: str | None, upstreams: str) -> str | None:
    """Return the cache key of the question, or None when it is not cached (cache off, no model, too many turns)."""
    if cache is None or not relay.chain:
        return None
    return cache_key(messages, turns=settings.reply_cache_turns, scope=scope, options=options, upstreams=upstreams,
                     model=model)


def new_claim_id() -> str:
    """Return the id a request's answer has if it claims its question: 144 random bits, URL-safe."""
    return secrets.token_urlsafe(18)


def find_answer(cache: ReplyCache, key: str, claim_id: str, *, fresh: bool, pending_for: float,
                found: Found | None = None) -> Found:
    """Look for the answer to ``key`` until it is found, or ``claim_id`` holds the claim (or the cache is off).

    ``found``: what a first look found already (made with the chat's count, ``guards.chat_counts``).
    """
    while True:
        if found is None:
            found = cache.look(key, claim_id, fresh=fresh, pending_for=pending_for)
        if found.kind == MISS:
            cache.claimed(claim_id)
        if found.kind != PENDING:
            return found
        # A claim made in this process says when its answer starts; another process's is looked at again.
        if not cache.wait_for_claim(found.answer_id, pending_for):
            time.sleep(LOOK_EVERY)
        found = None


def answered_reply(cache: ReplyCache, found: Found, record: ReplyRecord, relay: Relay) -> Reply | None:
    """Return the reply a hit or a join gives, or None if the answer it joined broke before its first piece."""
    record.provider = found.headers.get("provider", "")
    record.model = found.headers.get("model", "")
    record.cache = found.kind
    usage = Usage()
    if found.kind == HIT:
        lengths = _read_trailer(found.trailer, usage)
        pieces: Iterator[str] = pieces_of(found.body, lengths)
    else:
        pieces = _followed(cache, found.answer_id, usage)
    try:
        first = next(pieces)
    except (StopIteration, ProviderError):
        return None
    return Reply(record, first, pieces, None, relay, usage)


def _followed(cache: ReplyCache, answer_id: str, usage: Usage) -> Iterator[str]:
    """Yield the pieces of an answer being written, live, then end as it ended."""
    answers = cache.answers
    try:
        yield from text_of(answers.read(answer_id, 0))
        info = answers.info(answer_id)
    except (ProducerGone, RecordsUnavailable, UnknownStream) as exc:  # UnknownStream: expired, or cleared
        raise FollowedReplyBroke(f"the reply this one followed broke off: {exc!r}") from None
    if info.state != streams.COMPLETE:
        error = FollowedReplyBroke(f"the reply this one followed ended {info.state}")
        error.reason = info.cut_reason or info.state
        raise error
    _read_trailer(info.trailer, usage)


def _read_trailer(trailer: str, usage: Usage) -> list[int]:
    """Fill ``usage`` in from an answer's trailer; return its pieces' lengths."""
    if not trailer:
        return []
    ending = json.loads(trailer)
    usage.input_tokens, usage.output_tokens = ending.get("input_tokens"), ending.get("output_tokens")
    return ending.get("pieces", [])


class AnswerTap:
    """The answer a claimed question's live reply writes, piece by piece, for others to follow and find."""

    def __init__(self, cache: ReplyCache, key: str, answer_id: str):
        self.cache = cache
        self.key = key
        self.answer_id = answer_id
        self.lengths: list[int] = []  # of each piece's UTF-8, for a hit to stream the same pieces
        self._append = cache.answers.append

    def start(self, record: ReplyRecord) -> bool:
        """Start the answer, as the reply's provider and model; False when it cannot be recorded now (the caller
        then gives up the claim)."""
        try:
            self.cache.answers.start(self.answer_id, {"provider": record.provider, "model": record.model},
                                     lambda: None)
        except RecordsUnavailable:
            return False
        self.cache.claim_resolved(self.answer_id)
        return True

    def piece(self, text: str) -> None:
        if text:  # an empty piece is a silent upstream's heartbeat: nothing to keep
            data = text.encode()
            self.lengths.append(len(data))
            self._append(self.answer_id, data)

    def followed(self) -> bool:
        return not DRAIN.draining and self.cache.answers.has_reader(self.answer_id, within=FOLLOWED_WITHIN)

    def ended(self, record: ReplyRecord, usage: Usage | None) -> None:
        usage = usage or Usage()
        trailer = json.dumps({
            "input_tokens": usage.input_tokens if usage.input_tokens is not None else record.input_tokens,
            "output_tokens": usage.output_tokens if usage.output_tokens is not None else estimate_tokens(record.chars),
            "pieces": self.lengths,
        }, separators=(",", ":"))
        state = {COMPLETE: streams.COMPLETE, STOPPED: streams.STOPPED}.get(record.ended, streams.CUT_SHORT)
        if state != streams.COMPLETE:
            # Never an answer: the question is free for the next asker now, not once the record's end is
            # flushed (up to 50 ms in Redis, time enough for the same visitor's retry to join a broken reply).
            self.cache.release(self.key, self.answer_id)
        self.cache.answers.finish(self.answer_id, state, record.cut_reason, trailer)
