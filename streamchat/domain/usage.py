"""Token counts when the upstream reports none: estimated from characters, without a tokenizer.

A tokenizer that matches each model would need its vocabulary, which
tiktoken and friends download on first use; none is fetched here. English
text runs at about four characters a token with the GPT and Claude
tokenizers (other languages and code at fewer, so this undercounts them).
Counts made this way are labelled estimated wherever they are shown.
"""

from __future__ import annotations

CHARS_PER_TOKEN = 4


def estimate_tokens(chars: int) -> int:
    """Return the estimated tokens of ``chars`` characters of text (rounded up)."""
    return -(-chars // CHARS_PER_TOKEN)
