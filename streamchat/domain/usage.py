"""Token counts when the upstream reports none: estimated from characters, without a tokenizer.

A tokenizer that matches each model would need its vocabulary, which
tiktoken and friends download on first use; none is fetched here. English
text runs at about four characters a token with the GPT and Claude
tokenizers (other languages and code at fewer, so this undercounts them).
Counts made this way are labelled estimated wherever they are shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CHARS_PER_TOKEN = 4


def estimate_tokens(chars: int) -> int:
    """Return the estimated tokens of ``chars`` characters of text (rounded up)."""
    return -(-chars // CHARS_PER_TOKEN)


@dataclass
class Usage:
    """The tokens the upstream says a reply used, filled in by the provider as its events arrive.

    None until reported: OpenAI-compatible APIs send usage in a last chunk when asked
    (``stream_options.include_usage``), Anthropic in ``message_start`` (input) and
    ``message_delta`` (output, running total). A reply that ends before its usage
    came is estimated from the characters sent.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    #: Seconds until the key's spent rate limit resets, when the upstream's headers said nothing is left.
    key_exhausted_for: float | None = None


@dataclass
class Reservation:
    """Tokens set aside for one reply, in the budget windows they were charged to; settled once, when it ends."""

    tokens: int
    keys: tuple[str, str]  # (client window key, global window key), "" for a budget that is off
    in_redis: bool
    settled: bool = False


#: The prompt's estimate is raised by this much when reserving: a tokenizer may count more than four characters
#: a token would say (other languages, code), and a budget must not be overrun by the estimate's error.
PROMPT_MARGIN = 1.25


def reservation_size(prompt_chars: int, max_tokens: int) -> int:
    """Return the tokens to reserve for a reply: the prompt's estimate with its margin, and the reply's maximum."""
    return math.ceil(estimate_tokens(prompt_chars) * PROMPT_MARGIN) + max_tokens


def token_count(value) -> int | None:
    """Return ``value`` as a token count if it is one (a non-negative int), else None: usage is the upstream's JSON."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
