"""Token counts when the upstream reports none: estimated from characters, without a tokenizer.

A tokenizer that matches each model would need its vocabulary, which
tiktoken and friends download on first use; none is fetched here. English
text runs at about four characters a token with the GPT and Claude
tokenizers (other languages and code at fewer, so this undercounts them).
Counts made this way are labelled estimated wherever they are shown.
"""

from __future__ import annotations

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


def token_count(value) -> int | None:
    """Return ``value`` as a token count if it is one (a non-negative int), else None: usage is the upstream's JSON."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
