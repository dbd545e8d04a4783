"""What is known about one reply: who asked, who answered, what it cost and how it ended.

A ``ReplyRecord`` is made by the reply's opening path (``streamchat.web.opening``)
before any provider is called, filled in by the relay and the framer as the
reply streams, and handed, final, to every ``Relay`` listener when it closes:
the access log, the metrics, the token budgets' settlement. Each of them reads
named fields; nothing travels in a dict of strings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .usage import Reservation

#: How a reply ended (``ReplyRecord.ended``); ``open`` until it does.
OPEN, COMPLETE, CUT_SHORT, CLIENT_GONE, STOPPED = "open", "complete", "cut_short", "client_gone", "stopped"
#: X-Terminal-Reason when provider code raised something that is not a ProviderError: a bug, logged with its traceback.
INTERNAL_ERROR = "internal_error"
#: The failure reason of a provider skipped because the circuit breaker is cooling it down.
COOLING_DOWN = "cooling_down"
#: The cut_reason of a reply ended because the service restarts (``ServiceRestarting``).
RESTARTING = "restarting"


@dataclass
class Caller:
    """The request a reply answers, as its access line and metrics show it."""

    request_id: str
    method: str
    path: str
    endpoint: str  # the route (``/api/chat``), not the path: a metrics label
    client: str  # the peer address, as the access line shows it
    status: int = 200
    service_key: str | None = None  # on /v1: the key's id (a digest), never the key
    user_text: str | None = None  # with LOG_USER_TEXT: the start of the user's last message


@dataclass
class TokenHold:
    """A reply's place in the token budgets: what it set aside, and what its client may still spend."""

    remaining: int | None = None  # the X-Token-Budget-Remaining header; None: no budget applies
    reservation: Reservation | None = None  # None: nothing set aside (no model could answer, or it did not fit)
    hedge: Reservation | None = None  # what a hedge set aside: it pays for the prompt the losing request was sent


@dataclass
class ReplyRecord:
    """Everything known about one reply; final once it closes, when it goes to the listeners."""

    mode: str = "live"  # live | fallback
    reason: str = ""  # with fallback: why no model answered (X-Terminal-Reason)
    provider: str = ""
    model: str = ""
    rule: str = ""  # with fallback: the rule that answered
    started: float = field(default_factory=time.perf_counter)  # perf_counter() when the request began
    first_byte_at: float | None = None  # when the first text was handed to the client
    ended_at: float | None = None
    chunks: int = 0  # pieces of text handed out
    bytes: int = 0  # bytes the framer wrote for them (the notice not included)
    chars: int = 0  # characters of text handed out
    input_tokens: int = 0  # of a live reply: what the upstream reported, else estimated (tokens_estimated)
    output_tokens: int = 0
    tokens_estimated: bool = False
    ended: str = OPEN
    cut_reason: str = ""  # with cut_short: the X-Terminal-Reason-style slug of what broke
    failures: list[tuple[str, str]] = field(default_factory=list)  # (provider, reason), in chain order
    hedge: str = ""  # the upstream started beside a slow one (LLM_HEDGE_AFTER), if any
    hedge_won: bool = False  # whether that hedge wrote first and answered
    question: str | None = None  # with INSIGHTS_RETENTION_DAYS: the visitor's latest message, for its insights entry
    cache: str = ""  # a question the reply cache keeps: hit, joined (an identical one in flight) or miss
    stream_id: str = ""  # its record's id (X-Stream-Id), once it is recorded
    caller: Caller | None = None  # None for a reply no web request asked for
    tokens: TokenHold = field(default_factory=TokenHold)
